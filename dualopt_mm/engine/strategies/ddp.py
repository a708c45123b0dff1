"""What the hook and the constructor know about a run whose ranks hold whole tensors.

:class:`StrategyAdapter` is the default: one process, or DDP (every rank holds every tensor
and its θ_0, so a norm computed on one rank is the whole model's). :class:`ZeroAdapter` is
ZeRO-1 (:class:`~dualopt_mm.engine.zero.DualOptZeroRedundancyOptimizer`): the weights are
whole on every rank, θ_0 only on the rank that owns the tensor, so drift sums are added over
the ranks. The other strategies (:mod:`.fsdp`, :mod:`.deepspeed`) override what differs.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

__all__ = ['StrategyAdapter', 'ZeroAdapter', 'refuse_skip_1d']


class StrategyAdapter:
    """The model's tensors as the optimizer sees them, for one strategy.

    Attributes:
        name: the strategy, for messages.
        sharded: whether a rank holds only part of the model's weights (then the review
            settings that read a tensor's rank are refused, and the hook's own θ_0 copy of a
            non-DualOpt optimizer cannot be checkpointed).
    """

    name = 'single process / DDP'
    sharded = False

    def param_names(self, model: nn.Module) -> dict[int, str]:
        """``id(param) -> name`` of the model's parameters, names as in a checkpoint."""
        return {id(p): n for n, p in model.named_parameters()}

    def full_shapes(self, model: nn.Module) -> dict[str, tuple]:
        """``name -> shape`` of every parameter as a checkpoint holds it (unsharded)."""
        return {n: tuple(p.shape) for n, p in model.named_parameters()}

    def optimizer_of(self, optimizer: Any) -> torch.optim.Optimizer:
        """The optimizer whose param groups and state hold the tensors (the one given, unless
        the strategy wraps it)."""
        return optimizer

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-rank partial sums (e.g. squared norms) added into the whole model's."""
        return values

    def check_hook(self, review: bool, foreign: bool) -> None:
        """Refuse what WeightRollbackHook cannot do under this strategy (nothing here)."""

    def check_groups(self, optimizer: torch.optim.Optimizer, annotated: bool) -> None:
        """Refuse param groups the strategy cannot review right (``annotated``: built by
        DualOptOptimWrapperConstructor, one tensor each). Nothing here."""


class ZeroAdapter(StrategyAdapter):
    """ZeRO-1: whole weights on every rank, θ_0 and moments only where the tensor is owned."""

    name = 'ZeRO-1'

    def __init__(self, process_group: Optional[object] = None) -> None:
        self.process_group = process_group

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values, self.process_group)


def refuse_skip_1d(strategy: str, mode: str, skip_1d: Optional[bool], hands_over: str,
                   alternative: str = '') -> None:
    """Refuse ``skip_1d`` (scratch mode's default) under a strategy that hands the optimizer
    flat 1-d pieces (``hands_over``): a tensor's rank, which the rule reads, is lost there."""
    skips = mode == 'scratch' if skip_1d is None else skip_1d
    if skips and mode != 'none':
        raise NotImplementedError(
            f'DualOpt under {strategy}: mode={mode!r} with skip_1d={skip_1d!r} exempts 1-d '
            f'tensors by their rank, but {strategy} hands the optimizer {hands_over}. Set '
            "paramwise_cfg=dict(dualopt=dict(skip_1d=False)) (and custom_keys "
            f"dict(mode='none') for the norms and biases to exempt){alternative}")


def all_reduce_sum(values: torch.Tensor, group: Optional[object] = None) -> torch.Tensor:
    """``values`` summed over the ranks of ``group`` (the default group: all), unchanged
    outside a distributed run. A collective: every rank must call it."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return values
    device = values.device
    if dist.get_backend(group) == 'nccl':  # NCCL reduces CUDA tensors only
        values = values.to(torch.device('cuda', torch.cuda.current_device()))
    else:
        values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values.to(device)
