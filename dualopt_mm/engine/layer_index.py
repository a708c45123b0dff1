r"""Global layer index of the trainable tensors of a model.

DualOpt's level :math:`k_i` falls with the depth :math:`i` of a tensor. This module decides the
depth from parameter *names* only (no class-name sniffing), with two strategies:

``'tensor'``
    every tensor is its own layer, in the order of the model's parameters (the order
    ``model.named_parameters()`` and mmengine's constructor visit them). This is what the
    authors' reference code does (position of the tensor in its param group) when the whole
    model is one group.

``'block'``
    tensors are grouped into *blocks* (one level for all tensors of a block) and blocks are put
    in depth order using :class:`ArchitectureRule`\ s keyed on name patterns:

    ===================  ===================================================================
    family               blocks, shallow to deep (relative to the backbone's prefix)
    ===================  ===================================================================
    ResNet / ResNeXt     ``stem`` (conv1, bn1 or the deep ``stem``), then ``layer{s}.{b}``
    Swin                 ``stem`` (patch_embed, absolute_pos_embed), ``stages.{s}.blocks.{b}``,
                         the output norm ``norm{s}``, then ``stages.{s}.downsample``
    ConvNeXt             ``downsample_layers.{s}`` (0 is the stem), ``stages.{s}.{b}``,
                         ``norm{s}``
    MiT (SegFormer)      ``layers.{s}.0`` (patch embed), ``layers.{s}.1.{b}``, ``layers.{s}.2``
    ViT / BEiT / DeiT    ``stem`` (cls_token, pos_embed, patch_embed, pre_norm),
                         ``layers.{b}``, then the final norms
    ===================  ===================================================================

    A rule *claims* the prefix (the "root", e.g. ``backbone.``) under which its anchor pattern
    (``layer{s}.{b}.``, ``stages.{s}.blocks.{b}.``...) matches; inside a claimed root, the
    tensors registered before the first block form the ``stem`` block and tensors no pattern
    knows become blocks of their own after the root's last block. Tensors outside every
    claimed root (FPN necks, heads, or any backbone without a rule) use the generic fallback:
    one block per module that owns parameters directly (a conv's weight and bias share a
    level), in the order the model registers them. The fallback never fails, so any model
    gets an index.

The unit of the result is the *block index*: the position of a tensor's block in the depth
order of all blocks of the given names. :func:`dense_layer_ids` turns block indices of the
reviewed subset into the ``layer_id`` / ``num_layers`` the optimizers read, so the index is
global over the reviewed tensors whatever subset is reviewed.

Custom architectures: pass ``rules=DEFAULT_RULES + (ArchitectureRule(...),)`` or a
``get_layer_index(name) -> (block, depth) | None`` callable (like mmpretrain's
``get_layer_depth``) to :func:`assign_blocks`; the constructor takes both through its
``paramwise_cfg``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

#: Sort key of the blocks placed after every numbered block of a stage or root.
_LAST = 1_000_000

#: The stem sorts before every numbered block.
_STEM_KEY: Tuple[float, ...] = (-_LAST, -_LAST, 0)

#: ``get_layer_index(name)`` returns ``(block_name, depth)`` or None (built-in rules decide).
GetLayerIndex = Callable[[str], Optional[Tuple[str, float]]]

LAYER_INDEX_STRATEGIES = ('block', 'tensor')


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

    def match(self, relative_name: str) -> Optional[Tuple[str, Tuple[float, ...]]]:
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
    parts: Tuple[BlockPattern, ...] = ()

    def find_root(self, name: str) -> Optional[str]:
        """The shallowest prefix of ``name`` (ending with '.', or '') after which the anchor
        matches, or None."""
        pieces = name.split('.')
        for depth in range(len(pieces)):
            root = '.'.join(pieces[:depth]) + ('.' if depth else '')
            if self.anchor.match(name[len(root):]) is not None:
                return root
        return None

    def locate(self, relative_name: str) -> Optional[Tuple[str, Tuple[float, ...]]]:
        """Block (relative) and sort key of a name under a claimed root, or None."""
        for pattern in (self.anchor, *self.parts):
            found = pattern.match(relative_name)
            if found is not None:
                return found
        return None


#: Built-in rules, in priority order (the first rule to claim a root keeps it).
DEFAULT_RULES: Tuple[ArchitectureRule, ...] = (
    ArchitectureRule(
        'MiT',
        BlockPattern(r'layers\.(?P<s>\d+)\.1\.(?P<b>\d+)\.'),
        (BlockPattern(r'layers\.(?P<s>\d+)\.0\.', block=-1),
         BlockPattern(r'layers\.(?P<s>\d+)\.2\.', block=_LAST)),
    ),
    ArchitectureRule(
        'Swin',
        BlockPattern(r'stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.'),
        (BlockPattern(r'norm(?P<s>\d+)\.', block=_LAST, tie=0),
         BlockPattern(r'stages\.(?P<s>\d+)\.downsample\.', block=_LAST, tie=1)),
    ),
    ArchitectureRule(
        'ConvNeXt',
        BlockPattern(r'stages\.(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'downsample_layers\.(?P<s>\d+)\.', block=-1),
         BlockPattern(r'norm(?P<s>\d+)\.', block=_LAST)),
    ),
    ArchitectureRule('ResNet', BlockPattern(r'layer(?P<s>\d+)\.(?P<b>\d+)\.')),
    ArchitectureRule('ViT', BlockPattern(r'layers\.(?P<b>\d+)\.')),
)


def _owner(name: str) -> str:
    """The module path that owns parameter ``name`` ('' for a parameter of the root)."""
    return name.rpartition('.')[0]


def _claim_roots(names: Sequence[str],
                 rules: Sequence[ArchitectureRule]) -> Dict[str, ArchitectureRule]:
    """Map each claimed root prefix to its rule; nested roots are not claimed twice."""
    claimed: Dict[str, ArchitectureRule] = {}
    for rule in rules:
        for name in names:
            root = rule.find_root(name)
            if root is None or root in claimed:
                continue
            if any(root.startswith(other) or other.startswith(root) for other in claimed):
                continue  # inside (or around) a root another rule already explains
            claimed[root] = rule
    return claimed


def assign_blocks(names: Sequence[str],
                  strategy: str = 'block',
                  rules: Sequence[ArchitectureRule] = DEFAULT_RULES,
                  get_layer_index: Optional[GetLayerIndex] = None) -> List[Tuple[str, int]]:
    """Block name and block index of every parameter name.

    Args:
        names: full parameter names (``backbone.layer1.0.conv1.weight``), in the model's
            parameter order.
        strategy: ``'block'`` (architecture-aware) or ``'tensor'`` (one layer per tensor, in
            the order of ``names``).
        rules: the architecture rules of the ``'block'`` strategy.
        get_layer_index: optional ``name -> (block, depth)`` callable consulted first; names
            it returns None for follow the rules. Its blocks sort by ``depth`` and are placed
            where the first of them appears in ``names``.

    Returns:
        ``(block, block_index)`` per name, ``block_index`` in ``0 .. number_of_blocks - 1``,
        0 for the shallowest block.

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
        return [(name, index) for index, name in enumerate(names)]

    # region: a claimed root, the callable's names, or one generic block; it is placed where
    # its first tensor appears. Inside a region blocks sort by a local key.
    region_of: List[str] = []
    block_of: List[str] = []
    key_of: List[Tuple[float, ...]] = []
    roots = _claim_roots(names, rules)
    first_block_seen: Dict[str, bool] = {root: False for root in roots}
    for position, name in enumerate(names):
        custom = get_layer_index(name) if get_layer_index is not None else None
        if custom is not None:
            block, depth = custom
            region_of.append('\0custom')
            block_of.append(block)
            key_of.append((float(depth),))
            continue
        root = next((r for r in roots if name.startswith(r)), None)
        if root is None:
            owner = _owner(name)
            region_of.append('\0generic:' + owner)
            block_of.append(owner or name)
            key_of.append(())
            continue
        relative = name[len(root):]
        located = roots[root].locate(relative)
        region_of.append(root)
        if located is not None:
            block, key = located
            first_block_seen[root] = True
            block_of.append(root + block)
            key_of.append(key)
        elif not first_block_seen[root]:
            block_of.append(root + 'stem')
            key_of.append(_STEM_KEY)
        else:  # after the blocks: a block of its own per owning module, in order
            owner = _owner(relative)
            block_of.append(root + (owner or relative))
            key_of.append((_LAST, _LAST, position))

    region_position: Dict[str, int] = {}
    for position, region in enumerate(region_of):
        region_position.setdefault(region, position)
    # one key per block (its first tensor's); a block split across regions is refused below
    block_key: Dict[str, Tuple[int, Tuple[float, ...]]] = {}
    for region, block, key in zip(region_of, block_of, key_of):
        full_key = (region_position[region], key)
        if block not in block_key:
            block_key[block] = full_key
        elif block_key[block][0] != full_key[0]:
            raise ValueError(f'block {block!r} spans two regions of the model; give distinct '
                             'block names in get_layer_index')
    ordered = sorted(block_key, key=lambda b: block_key[b])
    index = {block: i for i, block in enumerate(ordered)}
    return [(block, index[block]) for block in block_of]


def dense_layer_ids(block_indices: Sequence[Optional[int]]) -> Tuple[List[Optional[int]], int]:
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
