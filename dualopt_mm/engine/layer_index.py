r"""Global layer index of the trainable tensors of a model.

DualOpt's level :math:`k_i` falls with the depth :math:`i` of a tensor. Strategies:

``'tensor'``
    every tensor is its own layer, in the order of the model's parameters, as in the authors'
    reference code (position of the tensor in its param group, the model being one group).
``'block'`` (default)
    tensors are grouped into *blocks* (one level per block), blocks put in depth order. The
    order of a tensor comes from the first of these that knows it:

    1. the user's ``get_layer_index(name) -> (block, depth) | None`` callable;
    2. the backbone's own definition (:mod:`dualopt_mm.engine.upstream_depth`): timm's
       ``group_matcher`` for any timm model, mmpretrain's ``get_layer_depth`` (ViT, Swin,
       ConvNeXt, BEiT, ...), one block per upstream depth;
    3. the :class:`ArchitectureRule` s below, keyed on parameter names (no class names), for
       the backbones that define nothing (mmdet / mmseg; the families are listed in
       docs/integration.md, "Block index");
    4. the generic fallback: one block per module owning parameters directly (weight and bias
       share a level), in registration order. It never fails; the constructor logs which
       modules fall to it.
``'rules'``
    ``'block'`` without step 2 (the index of earlier releases).

A rule *claims* the prefix (the "root", e.g. ``backbone.``) under which its anchor pattern
(``layer{s}.{b}.``, ``stages.{s}.blocks.{b}.``...) matches; inside a claimed root, the tensors
registered before the first block form the ``stem`` block and tensors no pattern knows become
blocks of their own (one per module under the root) after its last block. Patch embeddings
sit at the depth of the stage they feed, position encodings after it.

The *block index* of a tensor is the position of its block in the depth order of all blocks;
each upstream definition, claimed root, callable and generic module is placed where its first
tensor appears. :func:`dense_layer_ids` turns the block indices of the reviewed subset into the
``layer_id`` / ``num_layers`` the optimizers read, so the index is global over the reviewed
tensors whatever subset is reviewed. Custom architectures: pass
``rules=DEFAULT_RULES + (ArchitectureRule(...),)`` or a ``get_layer_index`` callable to
:func:`index_blocks` (the constructor takes the callable through its ``paramwise_cfg``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from .upstream_depth import UpstreamOrders, block_names, find_upstream_orders

#: Sort key of the blocks placed after every numbered block of a stage or root.
_LAST = 1_000_000

#: The stem sorts before every numbered block.
_STEM_KEY: tuple[float, ...] = (-_LAST, -_LAST, 0)

#: ``get_layer_index(name)`` returns ``(block_name, depth)`` or None (built-in rules decide).
GetLayerIndex = Callable[[str], Optional[tuple[str, float]]]

LAYER_INDEX_STRATEGIES = ('block', 'tensor', 'rules')

#: The source of the names no definition and no rule knows.
GENERIC = 'generic'


@dataclass(frozen=True)
class BlockPattern:
    """One name pattern of an architecture and where its blocks sort.

    Args:
        regex: matched at the start of the name relative to the root. Named groups ``s``
            (stage) and ``b`` (block in the stage) are integers; a missing group uses
            ``stage`` / ``block``. The matched text (without the trailing dot) names the block.
        stage: stage used when ``regex`` has no ``s`` group.
        block: position inside the stage when ``regex`` has no ``b`` group (``-1``: before
            the stage's blocks, ``_LAST``: after them).
        tie: breaks ties between patterns that share (stage, block).
    """

    regex: str
    stage: int = 0
    block: int = 0
    tie: int = 0

    def match(self, relative_name: str) -> Optional[tuple[str, tuple[float, ...]]]:
        """Block name (relative to the root) and sort key of ``relative_name``, or None."""
        m = re.match(self.regex, relative_name)
        if m is None:
            return None
        groups = m.groupdict()
        stage = int(groups['s']) if groups.get('s') is not None else self.stage
        block = int(groups['b']) if groups.get('b') is not None else self.block
        return m.group(0).rstrip('.'), (stage, block, self.tie)


@dataclass(frozen=True)
class ArchitectureRule:
    """The block layout of one backbone family, keyed on parameter-name patterns.

    Args:
        name: family name, for logs.
        anchor: the pattern of the repeated blocks; it decides which prefix (root) the rule
            claims: the shallowest prefix after which it matches.
        parts: further patterns tried, in order, on the names under a claimed root, after the
            anchor (stage transitions, output norms).
    """

    name: str
    anchor: BlockPattern
    parts: tuple[BlockPattern, ...] = ()

    def find_root(self, name: str) -> Optional[str]:
        """The shallowest prefix of ``name`` (ending with '.', or '') after which the anchor
        matches, or None."""
        pieces = name.split('.')
        for depth in range(len(pieces)):
            root = '.'.join(pieces[:depth]) + ('.' if depth else '')
            if self.anchor.match(name[len(root):]) is not None:
                return root
        return None

    def locate(self, relative_name: str) -> Optional[tuple[str, tuple[float, ...]]]:
        """Block (relative) and sort key of a name under a claimed root, or None."""
        for pattern in (self.anchor, *self.parts):
            found = pattern.match(relative_name)
            if found is not None:
                return found
        return None


_SE = _LAST  # shorthand: sorts after every numbered block

#: Built-in rules, in priority order (among roots of equal depth the first rule claims it).
DEFAULT_RULES: tuple[ArchitectureRule, ...] = (
    ArchitectureRule(
        'MiT',  # SegFormer's MiT, PVT, PVTv2
        BlockPattern(r'layers\.(?P<s>\d+)\.1\.(?P<b>\d+)\.'),
        (BlockPattern(r'layers\.(?P<s>\d+)\.0\.', block=-1),
         BlockPattern(r'layers\.(?P<s>\d+)\.2\.', block=_SE)),
    ),
    ArchitectureRule(
        'Swin',
        BlockPattern(r'stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.'),
        (BlockPattern(r'norm(?P<s>\d+)\.', block=_SE, tie=0),
         BlockPattern(r'stages\.(?P<s>\d+)\.downsample\.', block=_SE, tie=1)),
    ),
    ArchitectureRule(
        'ConvNeXt',
        BlockPattern(r'stages\.(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'downsample_layers\.(?P<s>\d+)\.', block=-1),
         BlockPattern(r'norm(?P<s>\d+)\.', block=_SE)),
    ),
    ArchitectureRule(
        'Staged',  # HRNet, CSPDarknet (YOLOX), CSPNeXt (RTMDet)
        BlockPattern(r'stage(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'layer(?P<s>\d+)\.(?P<b>\d+)\.'),
         BlockPattern(r'transition(?P<s>\d+)\.', block=_SE)),
    ),
    ArchitectureRule(
        'Twins/EfficientNet',
        BlockPattern(r'layers\.(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'patch_embeds\.(?P<s>\d+)\.', block=-1),
         BlockPattern(r'position_encodings\.(?P<s>\d+)\.', block=0, tie=1),
         BlockPattern(r'layers\.(?P<s>\d+)\.(?=(?:conv|bn)\.)', block=-1),
         BlockPattern(r'norm_list\.(?P<s>\d+)\.', block=_SE)),
    ),
    ArchitectureRule(
        'MSCAN',
        BlockPattern(r'block(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'patch_embed(?P<s>\d+)\.', block=-1),
         BlockPattern(r'norm(?P<s>\d+)\.', block=_SE)),
    ),
    ArchitectureRule(
        'PoolFormer',
        BlockPattern(r'network\.(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'network\.(?P<s>\d+)\.'),
         BlockPattern(r'norm(?P<s>\d+)\.', block=_SE)),
    ),
    ArchitectureRule(
        'Darknet',
        BlockPattern(r'conv_res_block(?P<s>\d+)\.res(?P<b>\d+)\.'),
        (BlockPattern(r'conv_res_block(?P<s>\d+)\.conv\.', block=-1),),
    ),
    ArchitectureRule(
        'HourglassNet',
        BlockPattern(r'hourglass_modules\.(?P<b>\d+)\.'),
        (BlockPattern(r'out_convs\.(?P<b>\d+)\.', tie=1),
         BlockPattern(r'conv1x1s\.(?P<b>\d+)\.', tie=2),
         BlockPattern(r'remap_convs\.(?P<b>\d+)\.', tie=3),
         BlockPattern(r'inters\.(?P<b>\d+)\.', tie=4)),
    ),
    # timm's EfficientNet / MobileNet feature extractors (TIMMBackbone(features_only=True)):
    # EfficientNetFeatures has no group_matcher; the classifiers have one
    ArchitectureRule('timm features', BlockPattern(r'blocks\.(?P<s>\d+)\.(?P<b>\d+)\.')),
    ArchitectureRule('ResNet', BlockPattern(r'layer(?P<s>\d+)\.(?P<b>\d+)\.')),
    ArchitectureRule('ViT', BlockPattern(r'layers\.(?P<b>\d+)\.')),
    # mmpretrain's HiViT (its get_layer_depth does not match its blocks)
    ArchitectureRule('ViT blocks', BlockPattern(r'blocks\.(?P<b>\d+)\.')),
    ArchitectureRule('MobileNetV3', BlockPattern(r'layer(?P<b>\d+)\.')),
    ArchitectureRule('SSD VGG', BlockPattern(r'features\.(?P<b>\d+)\.')),
)


def _owner(name: str) -> str:
    """The module path that owns parameter ``name`` ('' for a parameter of the root)."""
    return name.rpartition('.')[0]


def _claim_roots(names: Sequence[str],
                 rules: Sequence[ArchitectureRule]) -> dict[str, ArchitectureRule]:
    """Map each claimed root prefix to its rule; nested roots are not claimed twice.

    Shallow roots are claimed first (``backbone.`` before ``backbone.layers.0.ffn.``, where
    an FFN's ``layers.0.0`` would look like a stage); among roots of equal depth the rule
    listed first wins.
    """
    candidates = set()
    for priority, rule in enumerate(rules):
        for name in names:
            root = rule.find_root(name)
            if root is not None:
                candidates.add((root.count('.'), priority, root))
    claimed: dict[str, ArchitectureRule] = {}
    for _, priority, root in sorted(candidates):
        if root in claimed:
            continue
        if any(root.startswith(other) or other.startswith(root) for other in claimed):
            continue  # inside (or around) a root another rule already explains
        claimed[root] = rules[priority]
    return claimed


@dataclass(frozen=True)
class BlockIndex:
    """The block index of a list of parameter names (:func:`index_blocks`).

    Attributes:
        blocks: ``(block, block_index)`` per name.
        sources: where each name's order comes from: ``'timm group_matcher'``,
            ``'mmpretrain get_layer_depth'``, ``'rule: <family>'``, ``'generic'``,
            ``'get_layer_index'`` (the user's callable) or ``'tensor order'``.
        refused: the upstream definitions found but not used, with the reason.
    """

    blocks: list[tuple[str, int]]
    sources: list[str]
    refused: tuple[str, ...] = ()

    def by_module(self, names: Sequence[str],
                  among: Optional[Collection[str]] = None) -> dict[str, str]:
        """The source of each top-level module (``'backbone'`` -> ``'rule: ResNet'``) over the
        names in ``among`` (all by default): the first one other than ``'generic'``."""
        out: dict[str, str] = {}
        for name, source in zip(names, self.sources):
            if among is not None and name not in among:
                continue
            top = name.split('.', 1)[0]
            if out.get(top, GENERIC) == GENERIC:
                out[top] = source
        return out


def index_blocks(names: Sequence[str],
                 strategy: str = 'block',
                 rules: Sequence[ArchitectureRule] = DEFAULT_RULES,
                 get_layer_index: Optional[GetLayerIndex] = None,
                 model: Optional[nn.Module] = None) -> BlockIndex:
    """Block name, block index and order source of every parameter name.

    Args:
        names: full parameter names (``backbone.layer1.0.conv1.weight``), in the model's
            parameter order.
        strategy: ``'block'``, ``'rules'`` or ``'tensor'`` (see the module docstring).
        rules: the architecture rules of ``'block'`` and ``'rules'``.
        get_layer_index: optional ``name -> (block, depth)`` callable consulted first; names
            it returns None for follow the other sources. Its blocks sort by ``depth`` and are
            placed where the first of them appears in ``names``.
        model: the model of ``names``: with ``'block'`` its modules that define their own
            order are indexed by it (:mod:`~dualopt_mm.engine.upstream_depth`); None: rules.

    Returns:
        ``block_index`` in ``0 .. number_of_blocks - 1`` per name, 0 for the shallowest block.

    Raises:
        ValueError: unknown ``strategy`` or duplicate names.
    """
    if strategy not in LAYER_INDEX_STRATEGIES:
        raise ValueError(f'unknown layer_index strategy {strategy!r}: allowed are '
                         f'{", ".join(map(repr, LAYER_INDEX_STRATEGIES))} or a callable '
                         '(given as get_layer_index)')
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f'duplicate parameter names {duplicates}: names must be unique')
    if strategy == 'tensor':
        return BlockIndex([(name, index) for index, name in enumerate(names)],
                          ['tensor order'] * len(names))

    # region: an upstream or rule root, the callable's names, or one generic block; it is
    # placed where its first tensor appears. Inside a region blocks sort by a local key.
    region_of, block_of, source_of = [''] * len(names), [''] * len(names), [''] * len(names)
    key_of: list[tuple[float, ...]] = [()] * len(names)
    todo = []
    for position, name in enumerate(names):
        custom = get_layer_index(name) if get_layer_index is not None else None
        if custom is None:
            todo.append(position)
            continue
        region_of[position], source_of[position] = '\0custom', 'get_layer_index'
        block_of[position], key_of[position] = custom[0], (float(custom[1]),)

    found = (find_upstream_orders(model, [names[p] for p in todo])
             if strategy == 'block' and model is not None else UpstreamOrders())
    position_of = {name: position for position, name in enumerate(names)}
    for order in found.orders:
        for name, block in block_names(order).items():
            position = position_of[name]
            region_of[position], source_of[position] = order.root, order.source
            block_of[position], key_of[position] = block, (order.depth[name],)
    todo = [p for p in todo if not source_of[p]]

    roots = _claim_roots([names[p] for p in todo], rules)
    first_block_seen: dict[str, bool] = {root: False for root in roots}
    for position in todo:
        name = names[position]
        root = next((r for r in roots if name.startswith(r)), None)
        if root is None:
            owner = _owner(name)
            region_of[position], source_of[position] = '\0generic:' + owner, GENERIC
            block_of[position] = owner or name
            continue
        relative = name[len(root):]
        located = roots[root].locate(relative)
        region_of[position], source_of[position] = root, 'rule: ' + roots[root].name
        if located is not None:
            block, key_of[position] = located
            first_block_seen[root] = True
            block_of[position] = root + block
        elif not first_block_seen[root]:
            block_of[position], key_of[position] = root + 'stem', _STEM_KEY
        else:  # after the blocks: a block of its own per top module (conv + norm), in order
            block_of[position] = root + relative.split('.', 1)[0]
            key_of[position] = (_LAST, _LAST, position)

    region_position: dict[str, int] = {}
    for position, region in enumerate(region_of):
        region_position.setdefault(region, position)
    # one key per block (its first tensor's); a block split across regions is refused below
    block_key: dict[str, tuple[int, tuple[float, ...]]] = {}
    for region, block, key in zip(region_of, block_of, key_of):
        full_key = (region_position[region], key)
        if block not in block_key:
            block_key[block] = full_key
        elif block_key[block][0] != full_key[0]:
            raise ValueError(f'block {block!r} spans two regions of the model; give distinct '
                             'block names in get_layer_index')
    ordered = sorted(block_key, key=lambda b: block_key[b])
    index = {block: i for i, block in enumerate(ordered)}
    return BlockIndex([(block, index[block]) for block in block_of], source_of,
                      tuple(found.refused))


def assign_blocks(names: Sequence[str],
                  strategy: str = 'block',
                  rules: Sequence[ArchitectureRule] = DEFAULT_RULES,
                  get_layer_index: Optional[GetLayerIndex] = None,
                  model: Optional[nn.Module] = None) -> list[tuple[str, int]]:
    """``(block, block_index)`` of every parameter name: :func:`index_blocks` without the
    sources."""
    return index_blocks(names, strategy, rules, get_layer_index, model).blocks


def dense_layer_ids(block_indices: Sequence[Optional[int]]) -> tuple[list[Optional[int]], int]:
    """Layer ids ``0 .. num_layers - 1`` from block indices (None: not reviewed).

    Blocks keep their order; gaps left by blocks that are not reviewed close up, so the
    shallowest reviewed block gets 0 and the deepest ``num_layers - 1``.

    Example:
        >>> dense_layer_ids([3, 3, None, 7, 5])
        ([0, 0, None, 2, 1], 3)
    """
    unique = sorted({i for i in block_indices if i is not None})
    rank = {block_index: r for r, block_index in enumerate(unique)}
    return [None if i is None else rank[i] for i in block_indices], len(unique)
