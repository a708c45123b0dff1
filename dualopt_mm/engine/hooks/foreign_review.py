"""θ_0 and the review step for an optimizer that is not DualOpt's (``WeightRollbackHook``).

A DualOpt optimizer keeps θ_0 in its own state and reviews inside ``step()``. For any other
optimizer (torch's SGD / AdamW, a user's), ``WeightRollbackHook`` keeps θ_0 here, by tensor
name, saves it under the checkpoint key ``'weight_rollback'``, and with ``review=True``
applies the review step of :mod:`dualopt_mm.optim` after each optimizer step (a torch step
post-hook: a step the AMP grad scaler skips has no review either).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
from mmengine.logging import print_log

from ...optim.levels import review_weight
from ...optim.review import apply_review

__all__ = ['ForeignAnchors']


class ForeignAnchors:
    """θ_0 of the fine-tuned tensors of non-DualOpt optimizers, by tensor name."""

    def __init__(self) -> None:
        self.anchors: dict[str, torch.Tensor] = {}

    def restore_or_capture(self, tensors: Iterable[tuple[str, torch.Tensor]],
                           stored: Mapping[str, torch.Tensor], resumed: bool) -> None:
        """θ_0 from ``stored`` (a resumed checkpoint), else the current value (said when
        resuming: it is then a mid-training weight)."""
        for name, param in tensors:
            if name in stored:
                self.anchors[name] = stored[name].to(param.device, param.dtype)
                continue
            if resumed:
                print_log(f'resumed checkpoint has no θ_0 of {name}: capturing the current '
                          'weights', logger='current', level=logging.WARNING)
            self.anchors[name] = param.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: anchor.detach().cpu() for name, anchor in self.anchors.items()}

    @torch.no_grad()
    def review(self, tensors: Iterable[tuple[str, torch.Tensor, dict[str, Any], bool,
                                             Optional[float], str]]) -> None:
        """The review step over ``(name, param, group, finetune, level, k_unit)`` rows;
        tensors without a gradient (skipped by torch's optimizers) or a level are left."""
        params, anchors, weights = [], [], []
        for name, param, group, finetune, level, k_unit in tensors:
            if param.grad is None or not level:
                continue
            params.append(param)
            anchors.append(self.anchors[name] if finetune else None)
            weights.append(review_weight(level, group['lr'], group['base_lr'], k_unit, name))
        apply_review(params, anchors, weights)
