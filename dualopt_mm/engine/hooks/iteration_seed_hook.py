"""``IterationSeedHook``: random draws of an iteration depend on the iteration alone.

What an mmengine 0.10 resume restores: the model weights, the optimizer state (moments, step
counts, DualOpt's θ_0 and group hyper-parameters), the param schedulers, the message hub
(iteration, epoch, logged buffers) and the checkpoint keys of hooks (EMA weights,
``weight_rollback``). It does *not* restore the random number generators of torch, numpy and
Python, nor the position of data-loader workers' generators. So a run killed at iteration t and
resumed draws other numbers from t on (RPN / RoI samplers, dropout, drop-path, random
augmentations) and ends near, not at, the uninterrupted run (a killed and resumed mmseg UperNet
run differed by 5e-2 in a weight after 2 more iterations without this hook).

This hook reseeds torch (CPU and CUDA), numpy and ``random`` before every training iteration
with ``seed + iteration``, so the model's random choices are a function of the iteration. With a
data pipeline whose batch does not depend on the random state of earlier iterations (no random
augmentations, or ``num_workers=0`` and augmentations only after reseeding), a resumed run then
continues bit for bit like an uninterrupted one (tested with Mask R-CNN, UperNet and ResNet).
"""
from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['IterationSeedHook']


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Seed torch / numpy / random with ``seed + runner.iter`` before each training iteration.

    Add it with ``custom_hooks = [dict(type='IterationSeedHook')]``.

    Args:
        seed: the base seed; ``None`` takes the run's seed (``randomness.seed``, which mmengine
            stores in ``runner.seed``).
    """

    priority = 'VERY_HIGH'  # before every hook that may draw random numbers

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f'seed={seed!r} must be an int or None (the run\'s seed)')
        self.seed = seed

    def before_train_iter(self, runner: Any, batch_idx: int,
                          data_batch: Optional[Any] = None) -> None:
        base = self.seed if self.seed is not None else (runner.seed or 0)
        seed = (base + runner.iter) % 2**32
        torch.manual_seed(seed)  # also seeds every CUDA device
        np.random.seed(seed)
        random.seed(seed)
