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
    PVT / PVTv2          as MiT (v1: ``layers.{s}.1.0`` is the stage's position embedding)
    Staged CNNs          ``stage{s}.{b}`` with ``layer{s}.{b}`` and ``transition{s}``:
                         HRNet (stem, ``layer1.{b}``, ``transition1``, ``stage2.{module}``,
                         ...), CSPDarknet (YOLOX) and CSPNeXt (RTMDet) (``stem``,
                         ``stage{s}.{b}``)
    Twins / EfficientNet ``layers.{s}.{b}`` with ``patch_embeds.{s}`` before stage s and
                         ``position_encodings.{s}`` after its first block, ``norm_list.{s}``
                         after its last (Twins PCPVT/SVT),
                         or ``layers.{s}`` ConvModules before stage s (mmdet EfficientNet)
    MSCAN (SegNeXt)      ``patch_embed{s}``, ``block{s}.{b}``, ``norm{s}``
    PoolFormer           ``patch_embed``, ``network.{2k}.{b}`` (stage k), ``network.{2k+1}``
                         (its downsampling), ``norm{i}``
    Darknet (YOLOv3)     ``conv1``, ``conv_res_block{s}.conv``, ``conv_res_block{s}.res{b}``
    HourglassNet         ``stem``, per stack k: ``hourglass_modules.k``, ``out_convs.k``,
                         ``conv1x1s.k``, ``remap_convs.k``, ``inters.k``
    SSD VGG              ``features.{i}`` (each conv layer)
    timm (TIMMBackbone)  ``conv_stem``/``bn1`` stem, ``blocks.{s}.{b}`` (EfficientNet,
                         MobileNet...) or ``blocks.{b}`` (ViT), ``conv_head``/``bn2``
    MobileNetV3 (mmseg)  ``layer{i}`` (MobileNetV2 uses the ResNet rule)
    ===================  ===================================================================

    Patch embeddings sit at the depth of the stage they feed, position encodings after it.

    A rule *claims* the prefix (the "root", e.g. ``backbone.``) under which its anchor pattern
    (``layer{s}.{b}.``, ``stages.{s}.blocks.{b}.``...) matches; inside a claimed root, the
    tensors registered before the first block form the ``stem`` block and tensors no pattern
    knows become blocks of their own (one per module under the root) after its last block.
    Tensors outside every claimed root (FPN necks, heads, or any backbone without a rule) use
    the generic fallback (the constructor logs which top-level modules fall to it):
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
from typing import Optional

#: Sort key of the blocks placed after every numbered block of a stage or root.
_LAST = 1_000_000

#: The stem sorts before every numbered block.
_STEM_KEY: tuple[float, ...] = (-_LAST, -_LAST, 0)

#: ``get_layer_index(name)`` returns ``(block_name, depth)`` or None (built-in rules decide).
GetLayerIndex = Callable[[str], Optional[tuple[str, float]]]

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
        name: the block name (default: the matched text), so that sibling modules (a conv and
            its norm) can share one block.
    """

    regex: str
    stage: int = 0
    block: int = 0
    tie: int = 0
    name: Optional[str] = None

    def match(self, relative_name: str) -> Optional[tuple[str, tuple[float, ...]]]:
        """Block name (relative to the root) and sort key of ``relative_name``, or None."""
        m = re.match(self.regex, relative_name)
        if m is None:
            return None
        groups = m.groupdict()
        stage = int(groups['s']) if groups.get('s') is not None else self.stage
        block = int(groups['b']) if groups.get('b') is not None else self.block
        return self.name or m.group(0).rstrip('.'), (stage, block, self.tie)


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
    ArchitectureRule(
        'timm',  # mmpretrain's TIMMBackbone: EfficientNet, MobileNet, ...
        BlockPattern(r'blocks\.(?P<s>\d+)\.(?P<b>\d+)\.'),
        (BlockPattern(r'(?:conv_head|bn2)\.', stage=_SE, name='head'),),
    ),
    ArchitectureRule('ResNet', BlockPattern(r'layer(?P<s>\d+)\.(?P<b>\d+)\.')),
    ArchitectureRule('ViT', BlockPattern(r'layers\.(?P<b>\d+)\.')),
    ArchitectureRule(
        'timm ViT',
        BlockPattern(r'blocks\.(?P<b>\d+)\.'),
        (BlockPattern(r'(?:norm|fc_norm)\.', block=_SE, name='norm'),),
    ),
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


def rules_by_module(names: Sequence[str], rules: Sequence[ArchitectureRule] = DEFAULT_RULES,
                    get_layer_index: Optional[GetLayerIndex] = None) -> dict[str, str]:
    """The rule that indexes each top-level module (``'backbone'`` -> ``'ResNet'``):
    ``'custom'`` (``get_layer_index``), a rule name, or ``'generic'`` (no rule claims any of
    its tensors: one level per module)."""
    custom = {n for n in names if get_layer_index is not None
              and get_layer_index(n) is not None}
    roots = _claim_roots([n for n in names if n not in custom], rules)
    out: dict[str, str] = {}
    for name in names:
        top = name.split('.', 1)[0]
        if name in custom:
            out[top] = 'custom'
            continue
        root = next((r for r in roots if name.startswith(r)), None)
        if root is not None:
            out[top] = roots[root].name if out.get(top, 'generic') == 'generic' else out[top]
        else:
            out.setdefault(top, 'generic')
    return out


def assign_blocks(names: Sequence[str],
                  strategy: str = 'block',
                  rules: Sequence[ArchitectureRule] = DEFAULT_RULES,
                  get_layer_index: Optional[GetLayerIndex] = None) -> list[tuple[str, int]]:
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
    region_of: list[str] = []
    block_of: list[str] = []
    key_of: list[tuple[float, ...]] = []
    roots = _claim_roots(names, rules)
    first_block_seen: dict[str, bool] = {root: False for root in roots}
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
        else:  # after the blocks: a block of its own per top module (conv + norm), in order
            top = relative.split('.', 1)[0]
            block_of.append(root + top)
            key_of.append((_LAST, _LAST, position))

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
    return [(block, index[block]) for block in block_of]


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
