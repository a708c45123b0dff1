"""One small adapter per training strategy: what the constructor and ``WeightRollbackHook``
must know about how a strategy holds the model's tensors (names without wrapper parts, full
shapes, which ranks hold which part of θ_0, how a norm is added over the ranks).

:func:`adapter_for` picks the adapter from the model and optimizer themselves, so the same
code serves mmengine's ``Runner`` (DDP, ZeRO-1) and ``FlexibleRunner`` (FSDPStrategy,
DeepSpeedStrategy). A new strategy is one new adapter here.
"""
from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from .ddp import StrategyAdapter, ZeroAdapter, all_reduce_sum
from .deepspeed import (
    DeepSpeedAdapter,
    check_deepspeed_strategy,
    is_deepspeed_optimizer,
    is_deepspeed_strategy,
)
from .fsdp import FSDPAdapter, check_fsdp, clean_name, is_fsdp

__all__ = ['DeepSpeedAdapter', 'FSDPAdapter', 'StrategyAdapter', 'ZeroAdapter', 'adapter_for',
           'all_reduce_sum', 'check_deepspeed_strategy', 'check_fsdp', 'check_strategy',
           'clean_name', 'is_deepspeed_optimizer', 'is_deepspeed_strategy', 'is_fsdp']


def adapter_for(model: nn.Module, optimizer: Optional[Any] = None) -> StrategyAdapter:
    """The adapter of the strategy that holds ``model`` (the runner's, wrapped) and
    ``optimizer`` (the torch optimizer inside the optim wrapper)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    if is_deepspeed_optimizer(optimizer):
        return DeepSpeedAdapter()
    if is_fsdp(model):
        return FSDPAdapter(model)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return ZeroAdapter(getattr(optimizer, 'process_group', None))
    return StrategyAdapter()


def check_strategy(model: nn.Module, runner: Any, mode: str, skip_1d: Optional[bool],
                   dualopt_type: Optional[str]) -> None:
    """Refuse at build time what the strategy holding ``model`` (the constructor's argument;
    ``runner``: the runner building the optimizer, or None) cannot run right;
    ``dualopt_type``: the DualOpt optimizer being built (None: another optimizer)."""
    if is_fsdp(model):
        check_fsdp(model.module if hasattr(model, 'module') else model, mode, skip_1d)
    strategy = getattr(runner, 'strategy', None)
    if strategy is not None and is_deepspeed_strategy(strategy):
        check_deepspeed_strategy(strategy, mode, skip_1d, dualopt_type)
