"""Param groups built by another mmengine constructor: review what they let us place, say so.

``optim_wrapper = dict(optimizer=dict(type='DualOptAdamW'))`` without
``constructor='DualOptOptimWrapperConstructor'`` hands a DualOpt optimizer the groups of the
config's own constructor. Those carry no review keys, and the optimizer alone would index every
tensor by its position and review all of them in the optimizer's ``mode``: in fine-tuning, new
layers (neck, heads) rolled back toward their random initialisation at every step.

The layer-wise lr decay constructors leave enough in their groups to do better, recognised
from the keys they write (installed sources of mmdet 3.3 / mmseg 1.2 / mmpretrain 1.2):

- mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` (and mmseg's
  ``LayerDecayOptimizerConstructor``, its subclass): one group per (depth, decay) pair, keys
  ``group_name = 'layer_{depth}_{decay|no_decay}'``, ``lr_scale`` and torch's
  ``param_names``; the depth is the constructor's lr-decay layer (0 = stem; necks and heads
  sit at the deepest depth, beside the backbone's output norms).
- mmpretrain's ``LearningRateDecayOptimWrapperConstructor``: one group per tensor with
  ``param_name`` and ``layer_id``. That ``layer_id`` is *its* depth (from the model's
  ``get_layer_depth``, heads at the deepest), and DualOpt reads the same key as its layer
  index, with ``num_layers = 1 + max(layer_id)`` over all groups: the heads' depth set the
  ramp's end, and heads were reviewed at level ``k_min``.

For such groups (:func:`read_layout`) the optimizer, before its first update
(:func:`adopt_foreign_groups`, called while the levels are resolved):

- in ``mode='finetune'`` reviews only the tensors named ``backbone.*`` (the pretrained-looking
  ones, the fallback rule of the constructor's ``pretrained='auto'``); every other tensor
  stays unreviewed (the plain step, no θ_0 stored), whatever group it shares;
- in ``mode='scratch'`` keeps every tensor (a = 0 rolls nothing toward a random init);
- uses the constructor's depths as layer index: ``layer_id`` the depth's rank among the
  reviewed depths (mmdet / mmseg) or mmpretrain's own ``layer_id`` (kept, so a resumed
  checkpoint compares equal), ``num_layers`` the reviewed ones' (the deepest reviewed depth
  gets ``k_min``);
- writes ``num_layers`` (mmdet / mmseg also ``layer_id``) and the marker
  ``foreign_constructor`` into the groups (in the state_dict, so a resumed run keeps its index,
  with no "review settings differ" warning), and leaves ``mode``, lr and weight decay untouched;
- warns once per optimizer (:class:`ForeignParamGroupsWarning`, and the current mmengine
  logger when mmengine is loaded) with what it did and the one config line that gives DualOpt's
  block index and the pretrained/new split read from the checkpoint.

Groups are left as they are (today's rules) when any group was written by
``DualOptOptimWrapperConstructor`` (``block_index``), uses ``reference=True``, sets a ``mode``
of its own, or when the layout is not recognised: a plain ``DualOptAdamW(model.parameters())``,
``model.named_parameters()`` (torch's ``param_names`` alone) or per-group dicts written by hand.
The mmpretrain layout needs at least :data:`MIN_PER_TENSOR_GROUPS` groups, a ``backbone.*``
name and another one, so a short hand-written list with names and layer ids stays the user's.
This module needs only torch (mmengine's logger is used when mmengine is already imported).
"""
from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from torch.optim import Optimizer

__all__ = ['ForeignLayout', 'ForeignParamGroupsWarning', 'adopt_foreign_groups', 'read_layout']

#: group key marking groups whose layer index this module wrote (value: the constructor)
MARKER = 'foreign_constructor'

#: the names of the constructors, as the warning gives them
MMSEG_MMDET = "mmdet's / mmseg's LearningRateDecayOptimizerConstructor"
MMPRETRAIN = "mmpretrain's LearningRateDecayOptimWrapperConstructor"

#: fewest one-tensor groups taken for mmpretrain's layout (a real model has hundreds)
MIN_PER_TENSOR_GROUPS = 8

#: what a pretrained-looking tensor's name starts with (after model-wrapper prefixes)
PRETRAINED_PREFIX = 'backbone.'

#: the one config line that makes the groups right
CONSTRUCTOR_LINE = "optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')"

_GROUP_NAME = re.compile(r'^layer_(\d+)_')
_WARNED = '_dualopt_warned_foreign_groups'  # warn-once flag set on the optimizer


class ForeignParamGroupsWarning(UserWarning):
    """A DualOpt optimizer received the param groups of another mmengine constructor and chose
    which tensors to review from what they carry (:mod:`dualopt_mm.optim.foreign_groups`)."""


@dataclass
class ForeignLayout:
    """Param groups recognised as a layer-decay constructor's.

    Attributes:
        constructor: which constructor wrote them (:data:`MMSEG_MMDET` or :data:`MMPRETRAIN`).
        groups: indices of the recognised groups in ``optimizer.param_groups``.
        depths: per recognised group, the constructor's lr-decay depth.
        names: per recognised group, the name of each of its tensors (None: unnamed).
    """

    constructor: str
    groups: list[int]
    depths: list[int]
    names: list[list[Optional[str]]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _group_names(group: dict[str, Any]) -> list[Optional[str]]:
    """The names of a group's tensors: ``param_name`` (one tensor) or torch's ``param_names``."""
    params = group['params']
    name = group.get('param_name')
    if isinstance(name, str) and len(params) == 1:
        return [name]
    names = group.get('param_names')
    if isinstance(names, (list, tuple)) and len(names) == len(params):
        return [n if isinstance(n, str) else None for n in names]
    return [None] * len(params)


def _mmseg_depth(group: dict[str, Any]) -> Optional[int]:
    """The depth of an mmdet / mmseg layer-decay group (``group_name='layer_3_decay'``)."""
    match = _GROUP_NAME.match(str(group.get('group_name', '')))
    if match is None or 'lr_scale' not in group or 'param_names' not in group:
        return None
    return int(match.group(1))


def _mmpretrain_depth(group: dict[str, Any]) -> Optional[int]:
    """The depth of an mmpretrain layer-decay group: one tensor, ``param_name``, its
    ``layer_id`` and no ``num_layers`` (DualOpt's constructor always writes one)."""
    if len(group['params']) != 1 or not isinstance(group.get('param_name'), str):
        return None
    if not _is_int(group.get('layer_id')) or group.get('num_layers') is not None:
        return None
    return group['layer_id']


def _own_layer_id(group: dict[str, Any]) -> Optional[int]:
    """The depth of an adopted mmpretrain group: its ``layer_id``, kept as the index."""
    return group['layer_id'] if _is_int(group.get('layer_id')) else None


def _strip_wrappers(name: str) -> str:
    while name.startswith('module.'):
        name = name[len('module.'):]
    return name


def _depths(groups: Sequence[dict[str, Any]], indices: list[int],
            depth_of: Callable[[dict[str, Any]], Optional[int]]) -> Optional[list[int]]:
    depths = [depth_of(groups[gi]) for gi in indices]
    return None if any(d is None for d in depths) else depths


def read_layout(groups: Sequence[dict[str, Any]], default_mode: str) -> Optional[ForeignLayout]:
    """Recognise the groups of a layer-decay constructor (module docstring), else None."""
    indices = [gi for gi, g in enumerate(groups) if g['params']]
    marked = [gi for gi in indices if MARKER in groups[gi]]
    if marked:  # adopted before (or resumed): the same groups again, groups added since aside
        constructor = groups[marked[0]][MARKER]
        depths = _depths(groups, marked,
                         _mmseg_depth if constructor == MMSEG_MMDET else _own_layer_id)
        if depths is None:
            return None
        return ForeignLayout(constructor, marked, depths,
                             [_group_names(groups[gi]) for gi in marked])
    if not indices or default_mode == 'none' or any(
            'block_index' in g or g.get('reference', False) or g.get('mode') != default_mode
            for g in groups):
        return None
    for constructor, depth_of in ((MMSEG_MMDET, _mmseg_depth), (MMPRETRAIN, _mmpretrain_depth)):
        depths = _depths(groups, indices, depth_of)
        if depths is None:
            continue
        names = [_group_names(groups[gi]) for gi in indices]
        if constructor == MMPRETRAIN:
            flat = [_strip_wrappers(n[0]) for n in names if n[0] is not None]
            backbone = [n.startswith(PRETRAINED_PREFIX) for n in flat]
            if len(flat) < MIN_PER_TENSOR_GROUPS or all(backbone) or not any(backbone):
                return None
        return ForeignLayout(constructor, indices, depths, names)
    return None


def _keeps(name: Optional[str], mode: str) -> bool:
    """Whether a tensor the optimizer would review stays reviewed."""
    if mode == 'scratch':
        return True
    return name is not None and _strip_wrappers(name).startswith(PRETRAINED_PREFIX)


def adopt_foreign_groups(optimizer: Optimizer, reviewed: list[list[bool]]) -> bool:
    """Review a layer-decay constructor's groups the way their keys allow (module docstring).

    Called by the optimizer while it resolves its levels, before the layer index is read.

    Args:
        optimizer: the DualOpt optimizer; its recognised groups get ``num_layers`` (mmdet /
            mmseg also ``layer_id``) and :data:`MARKER`.
        reviewed: per group, per tensor, whether the optimizer would review it (its mode,
            ``requires_grad``, ``skip_1d``); the tensors left out are set to False in place.

    Returns:
        Whether the groups were recognised (and adopted).
    """
    groups = optimizer.param_groups
    layout = read_layout(groups, optimizer.defaults.get('mode', 'finetune'))
    if layout is None:
        return False
    kept: list[bool] = []  # per recognised group: any tensor still reviewed
    left_out: list[str] = []
    num_reviewed = 0
    for gi, names in zip(layout.groups, layout.names):
        for pi, name in enumerate(names):
            if not reviewed[gi][pi]:
                continue
            if _keeps(name, groups[gi]['mode']):
                num_reviewed += 1
            else:
                reviewed[gi][pi] = False
                left_out.append(name or f'parameter {pi} of param group {gi}')
        kept.append(any(reviewed[gi]))
    depths = sorted({d for d, k in zip(layout.depths, kept) if k})
    if layout.constructor == MMPRETRAIN:  # its layer_id stays: a depth index already
        num_layers = 1 + max(depths, default=0)
    else:  # the depth's rank among the reviewed depths
        num_layers = len(depths)
        rank = {d: i for i, d in enumerate(depths)}
    for gi, depth, is_kept in zip(layout.groups, layout.depths, kept):
        group = groups[gi]
        group[MARKER] = layout.constructor
        if layout.constructor == MMSEG_MMDET:
            group['layer_id'] = rank[depth] if is_kept else None
        group['num_layers'] = num_layers if is_kept else None
    if not getattr(optimizer, _WARNED, False):
        setattr(optimizer, _WARNED, True)
        _say(describe(type(optimizer).__name__, layout, groups, num_reviewed, left_out,
                      depths, num_layers))
    return True


def describe(optimizer_name: str, layout: ForeignLayout, groups: Sequence[dict[str, Any]],
             num_reviewed: int, left_out: list[str], depths: list[int],
             num_layers: int) -> str:
    """The warning: whose groups, what the optimizer does with them, the line to add."""
    modes = '/'.join(sorted({groups[gi]['mode'] for gi in layout.groups}))
    if layout.constructor == MMSEG_MMDET:
        keys = 'group_name / lr_scale / param_names'
        instead = ('one level per tensor (tensor order) and every tensor reviewed, new necks / '
                   'heads rolled back toward their random init')
        index = (f"the constructor's lr-decay depth (depths {depths[0]}..{depths[-1]} -> "
                 f'layer_id 0..{num_layers - 1})' if depths else 'nothing')
    else:
        keys = 'param_name / layer_id'
        instead = ("its layer_id (the constructor's lr-decay depth) as DualOpt's layer index "
                   'with every tensor reviewed, heads included at the deepest depth')
        index = (f"the constructor's layer_id, num_layers {num_layers} set from the reviewed "
                 f'tensors (depth {num_layers - 1} gets k_min)' if depths else 'nothing')
    what = ('every tensor' if modes == 'scratch' else
            f'the {num_reviewed} {PRETRAINED_PREFIX}* tensors only')
    left = ''
    if left_out:
        shown = '; '.join(left_out[:4]) + (f'; ... ({len(left_out)} in all)'
                                            if len(left_out) > 4 else '')
        left = (f' {len(left_out)} tensors it cannot place as pretrained stay unreviewed '
                f'(plain step, no theta_0): {shown}.')
    return (
        f'DualOpt: {optimizer_name} got the param groups of {layout.constructor} (keys '
        f'{keys}) in mode={modes!r}, not those of DualOptOptimWrapperConstructor. Instead of '
        f'{instead}, it reviews {what}, indexed by {index}.{left}'
        f"{' No tensor is reviewed.' if num_reviewed == 0 else ''} lr and weight decay stay "
        f"the constructor's. For DualOpt's block index and the pretrained/new split read from "
        f'the checkpoint, add the one-line switch: {CONSTRUCTOR_LINE} (it keeps the layer-decay '
        f'paramwise_cfg and its lr / weight decay per tensor).')


def _say(message: str) -> None:
    """Warn, and log on the current mmengine logger when mmengine is in use."""
    warnings.warn(message, ForeignParamGroupsWarning, stacklevel=6)
    if sys.modules.get('mmengine.logging') is None:
        return
    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)
