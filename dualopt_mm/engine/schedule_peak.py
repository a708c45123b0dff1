"""The largest learning rate an mmengine schedule reaches, for the early λ ≤ 1 check.

:func:`lr_peak_factor` bounds lr / initial lr over one param scheduler's range (>= 1);
:func:`peak_lr` multiplies the bounds of all the run's schedulers (an upper bound where they
overlap).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mmengine.optim.scheduler import (
    ConstantParamScheduler,
    CosineAnnealingParamScheduler,
    CosineRestartParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    OneCycleParamScheduler,
    PolyParamScheduler,
    StepParamScheduler,
)

__all__ = ['flatten_schedulers', 'lr_peak_factor', 'peak_lr']


def lr_peak_factor(scheduler: Any, base_lr: float) -> float:
    """An upper bound of lr / initial lr over ``scheduler``'s range (>= 1)."""
    if getattr(scheduler, 'param_name', 'lr') != 'lr':
        return 1.0
    span = scheduler.end - scheduler.begin
    if isinstance(scheduler, LinearParamScheduler):
        factor = max(scheduler.start_factor, scheduler.end_factor)
    elif isinstance(scheduler, ConstantParamScheduler):
        factor = scheduler.factor
    elif isinstance(scheduler, (StepParamScheduler, ExponentialParamScheduler)):
        steps = (span // scheduler.step_size if isinstance(scheduler, StepParamScheduler)
                 else span)
        factor = scheduler.gamma**steps if scheduler.gamma > 1 else 1.0
    elif isinstance(scheduler, MultiStepParamScheduler):
        steps = sum(scheduler.milestones.values())
        factor = scheduler.gamma**steps if scheduler.gamma > 1 else 1.0
    elif isinstance(scheduler, (CosineAnnealingParamScheduler, PolyParamScheduler,
                                CosineRestartParamScheduler)):
        eta_min = getattr(scheduler, 'eta_min', None)
        ratio = getattr(scheduler, 'eta_min_ratio', None)
        if ratio is not None:
            factor = ratio
        else:
            factor = (eta_min or 0.0) / base_lr if base_lr else 1.0
        weights = getattr(scheduler, 'restart_weights', None)
        if weights:
            factor = max(factor, max(weights))
    elif isinstance(scheduler, OneCycleParamScheduler):
        eta_max = scheduler.eta_max
        eta_max = max(eta_max) if isinstance(eta_max, (list, tuple)) else eta_max
        factor = eta_max / base_lr if base_lr else 1.0
    else:  # ReduceOnPlateau (factor < 1) and unknown schedulers
        factor = 1.0
    return max(1.0, float(factor))


def flatten_schedulers(schedulers: Any) -> list[Any]:
    if schedulers is None:
        return []
    if isinstance(schedulers, dict):
        return [s for value in schedulers.values() for s in flatten_schedulers(value)]
    if isinstance(schedulers, (list, tuple)):
        return [s for value in schedulers for s in flatten_schedulers(value)]
    return [schedulers]


def peak_lr(base_lr: float, schedulers: Sequence[Any]) -> float:
    """An upper bound of the lr that ``schedulers`` (flattened by :func:`flatten_schedulers`
    from a runner's ``param_schedulers``) reach from ``base_lr``."""
    return base_lr * math.prod(lr_peak_factor(s, base_lr) for s in schedulers)
