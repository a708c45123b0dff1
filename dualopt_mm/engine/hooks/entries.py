"""The tensors ``WeightRollbackHook`` knows: one :class:`Entry` per trainable tensor (name,
the tensor as the optimizer holds it, its group, mode, layer and block), read off the groups
``DualOptOptimWrapperConstructor`` annotated or decided by the hook for other groups; and the
refinement of ``pretrained='auto'`` from the tensors a checkpoint filled."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..constructor import assign_layer_ids
from ..layer_index import assign_blocks, dense_layer_ids
from ..pretrained import pretrained_candidates

__all__ = ['Entry', 'entries_from_groups', 'entries_from_names', 'is_annotated',
           'refine_modes']


@dataclass
class Entry:
    """One trainable tensor the hook knows about (``param``: as the optimizer holds it, a
    whole tensor, an FSDP shard or a DeepSpeed partition)."""

    name: str
    param: torch.Tensor
    group: dict
    mode: str
    layer_id: Optional[int]
    num_layers: Optional[int]
    block: str


def is_annotated(optimizer: torch.optim.Optimizer) -> bool:
    """Whether DualOptOptimWrapperConstructor made the groups (one tensor each, with keys)."""
    return all('param_name' in g and 'block_index' in g and len(g['params']) == 1
               for g in optimizer.param_groups)


def entries_from_groups(optimizer: torch.optim.Optimizer) -> list[Entry]:
    """The entries of annotated groups, as the constructor (and the refinement) set them."""
    return [Entry(name=g['param_name'], param=g['params'][0], group=g, mode=g['mode'],
                  layer_id=g['layer_id'], num_layers=g['num_layers'], block=g['block'])
            for g in optimizer.param_groups]


def entries_from_names(model: nn.Module, optimizer: torch.optim.Optimizer,
                       names: dict[int, str], filled: Optional[set[str]], mode: str,
                       pretrained: Union[str, Sequence[str]], layer_index: str,
                       stored: Optional[dict[str, dict[str, Any]]] = None) -> list[Entry]:
    """Entries for groups no constructor annotated: modes and layers decided here (or
    ``stored``: those a resumed checkpoint of the hook holds, by name)."""
    pairs = [(names[id(p)], p, g) for g in optimizer.param_groups for p in g['params']
             if p.requires_grad and id(p) in names]
    if stored:
        return [Entry(name, p, g, **stored[name]) if name in stored else
                Entry(name, p, g, 'none', None, None, name) for name, p, g in pairs]
    all_names = [name for name, _, _ in pairs]
    if mode == 'scratch':
        tracked = set(all_names)
    elif filled is not None:
        tracked = set(all_names) & filled
    else:
        tracked = set(pretrained_candidates(model, all_names, pretrained))
    blocks = assign_blocks(all_names, layer_index, model=model)  # the backbone's own order
    layer_ids, num_layers = dense_layer_ids(
        [b if n in tracked else None for n, (_, b) in zip(all_names, blocks)])
    return [Entry(name, p, g, mode if layer_id is not None else 'none', layer_id,
                  num_layers if layer_id is not None else None, block)
            for (name, p, g), (block, _), layer_id in zip(pairs, blocks, layer_ids)]


def refine_modes(optimizer: torch.optim.Optimizer, filled: Optional[set[str]]) -> bool:
    """Groups built with ``pretrained='auto'`` (``mode_auto``): filled by a checkpoint →
    the run's mode, not filled → ``'none'``, layers renumbered; names are the groups'
    ``param_name`` (the model's, whatever strategy holds the tensor). Returns whether a mode
    changed; with no checkpoint configured says what the anchors then are."""
    auto = [g for g in optimizer.param_groups if g.get('mode_auto')]
    if not auto:
        return False
    if filled is None:
        if not any(g['mode'] == 'finetune' and not g.get('mode_auto')
                   for g in optimizer.param_groups):
            print_log(
                "pretrained='auto' but no checkpoint is configured (no load_from, no "
                "init_cfg=Pretrained): fine-tuning anchors are the initial weights of the "
                "build-time candidates; use mode='scratch' for a run from scratch",
                logger='current', level=logging.WARNING)
        return False  # else: pretrained decided at build time (modules loaded when built)
    changed = []
    for group in auto:
        mode = 'finetune' if group['param_name'] in filled else 'none'
        if group['mode'] != mode:
            changed.append(f'{group["param_name"]}: {group["mode"]} -> {mode}')
            group['mode'] = mode
    if changed:
        assign_layer_ids(optimizer.param_groups)
        print_log('WeightRollbackHook: reviewed tensors refined from the checkpoint keys '
                  f'({len(changed)} changed):\n  ' + '\n  '.join(changed), logger='current')
    return bool(changed)
