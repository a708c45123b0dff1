"""FSDP (``use_orig_params=True``): parameter names without FSDP's wrapper components, the
unsharded shapes a checkpoint is matched against, drift sums added over the shards, and the
combinations that are refused (docs/integration.md, "Training on many GPUs / many machines").

Under FSDP with ``use_orig_params=True`` the optimizer holds each model tensor under its own
parameter object, but that object is a flat 1-d view of this rank's slice of the tensor
(empty when the slice falls on another rank). So: names are cleaned of
``_fsdp_wrapped_module.``; the full shapes come from FSDP's ``summon_full_params`` (public API,
one unsharded copy of the weights for the duration of the call, as a full-state ``load_from``
already needs); the per-rank squared norms of θ − θ_0 and θ_0 are added over the ranks.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from .ddp import StrategyAdapter, all_reduce_sum, refuse_skip_1d

__all__ = ['ANCHOR_PLACEHOLDERS', 'FSDPAdapter', 'WRAPPER_NAME_PARTS', 'check_fsdp',
           'clean_name', 'is_fsdp', 'pad_anchor_state']

#: Param-group key of a saved optimizer state: positions (in the group) of the tensors whose
#: ``anchor`` is a zero placeholder, dropped again on load (see :func:`pad_anchor_state`).
ANCHOR_PLACEHOLDERS = 'fsdp_anchor_placeholders'


#: Name components FSDP (and activation checkpointing) insert into parameter names.
WRAPPER_NAME_PARTS = ('_fsdp_wrapped_module.', '_checkpoint_wrapped_module.')


def clean_name(name: str) -> str:
    """``name`` without the components FSDP wrappers insert (the model's own name)."""
    for part in WRAPPER_NAME_PARTS:
        name = name.replace(part, '')
    return name


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` contains a ``FullyShardedDataParallel`` unit."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def check_fsdp(model: nn.Module, mode: str, skip_1d: Optional[bool]) -> None:
    """Refuse the FSDP setups DualOpt cannot run.

    Supported: ``use_orig_params=True`` (the optimizer sees each tensor's local shard under its
    own name), with ``skip_1d`` False (the default in finetune mode): shards are flat, so a
    tensor's original rank, which ``skip_1d`` reads, is not visible to the optimizer.
    """
    names = [n for n, _ in model.named_parameters()]
    if any('flat_param' in n for n in names):
        raise NotImplementedError(
            'DualOpt under FSDP needs use_orig_params=True (model_wrapper=dict(type='
            "'MMFullyShardedDataParallel', use_orig_params=True)): with flat parameters the "
            "optimizer cannot tell the model's tensors apart (names, pretrained split, block "
            'index). Or shard only the optimizer state with ZeRO-1 (docs/integration.md, '
            '"Training on many GPUs / many machines")')
    refuse_skip_1d('FSDP', mode, skip_1d, 'flat 1-d shards of every tensor',
                   ', or use DDP / ZeRO-1')


class FSDPAdapter(StrategyAdapter):
    """FSDP with ``use_orig_params=True``: each rank holds a flat slice of every tensor."""

    name = 'FSDP'
    sharded = True

    def __init__(self, wrapped: nn.Module) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        #: the outermost FSDP unit (the runner's model, or its first FSDP submodule)
        self.root = next(m for m in wrapped.modules() if isinstance(m, FSDP))

    def param_names(self, model: nn.Module) -> dict[int, str]:
        return {id(p): clean_name(n) for n, p in model.named_parameters()}

    def full_shapes(self, model: nn.Module) -> dict[str, tuple]:
        """Unsharded shapes, read inside ``summon_full_params`` (a collective)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.summon_full_params(self.root, writeback=False):
            return {clean_name(n): tuple(p.shape) for n, p in model.named_parameters()}

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values)

    def check_hook(self, review: bool, foreign: bool) -> None:
        if foreign:  # review or drift only: a resume could not restore the other ranks' theta_0
            raise NotImplementedError(
                f'WeightRollbackHook(review={review}) under FSDP with an optimizer that is not '
                "DualOpt's: the hook would keep theta_0 of this rank's shards, which a "
                'full-state checkpoint (saved by rank 0) cannot restore on the other ranks, '
                'so a resumed run would review toward (or log drift from) wrong anchors. Use a '
                "DualOpt optimizer (its theta_0 is optimizer state, which FSDP's "
                "optim_state_dict gathers and re-shards): optim_wrapper=dict(constructor="
                "'DualOptOptimWrapperConstructor')")


def pad_anchor_state(optimizer: torch.optim.Optimizer) -> None:
    """Let ``FSDP.optim_state_dict`` gather a DualOpt optimizer's state (checkpoints).

    FSDP gathers each tensor state key (``exp_avg``, ``anchor``, ...) across the tensors of a
    flat parameter and assumes every tensor with state has every key; DualOpt keeps θ_0
    (``anchor``) for the reviewed tensors only, and torch 2.13 then fails (``Manually
    calculated _sharded_numel_padded is incorrect``). So the saved state gets a zero
    ``anchor`` for the other tensors, their positions under the group key
    :data:`ANCHOR_PLACEHOLDERS`, and loading drops them again (torch optimizer state-dict
    hooks, public API). The checkpoint grows by one zero tensor per non-reviewed tensor.
    """
    optimizer.register_state_dict_post_hook(_add_anchor_placeholders)
    optimizer.register_load_state_dict_pre_hook(_drop_anchor_placeholders)


def _add_anchor_placeholders(optimizer: Any, state_dict: dict) -> dict:
    state = dict(state_dict['state'])
    # which tensors have no θ_0 by design (not reviewed in finetune mode): the same on every
    # rank, whichever holds a part of them, so rank 0's saved groups name them all
    anchored = {id(p) for p, layer_id, _, _ in optimizer.review_levels()
                if layer_id is not None}
    if not anchored:
        return state_dict
    dtype = next((s['anchor'].dtype for s in state.values()
                  if isinstance(s.get('anchor'), torch.Tensor)), None)
    params = [p for g in optimizer.param_groups for p in g['params']]
    groups = []
    for live, group in zip(optimizer.param_groups, state_dict['param_groups']):
        padded = []
        for position, index in enumerate(group['params']):
            param = params[index]
            if live['mode'] == 'finetune' and id(param) in anchored:
                continue
            padded.append(position)
            entry = state.get(index)
            if entry and 'anchor' not in entry:
                state[index] = dict(entry, anchor=torch.zeros(
                    param.shape, dtype=dtype or _anchor_dtype(live, param),
                    device=param.device))
        groups.append(dict(group, **{ANCHOR_PLACEHOLDERS: padded}) if padded else group)
    return dict(state_dict, state=state, param_groups=groups)


def _anchor_dtype(group: dict, param: torch.Tensor) -> torch.dtype:
    """The dtype DualOpt stores θ_0 in: the group's ``anchor_dtype``, else the tensor's."""
    dtype = group.get('anchor_dtype')
    if isinstance(dtype, str):
        return getattr(torch, dtype)
    return dtype if isinstance(dtype, torch.dtype) else param.dtype


def _drop_anchor_placeholders(optimizer: Any, state_dict: dict) -> dict:
    state = dict(state_dict['state'])
    groups = []
    for group in state_dict['param_groups']:
        if ANCHOR_PLACEHOLDERS in group:
            group = dict(group)
            for position in group.pop(ANCHOR_PLACEHOLDERS):
                index = group['params'][position]
                if index in state:
                    state[index] = {k: v for k, v in state[index].items() if k != 'anchor'}
        groups.append(group)
    return dict(state_dict, state=state, param_groups=groups)
