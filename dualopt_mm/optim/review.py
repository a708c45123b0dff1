r"""The review step :math:`\theta \leftarrow \hat\theta - \lambda(\hat\theta - a)` (the rule is
in :mod:`dualopt_mm.optim`): one tensor at a time (the specification) and with
``torch._foreach_*`` ops (the same operations, bucketed by :mod:`~dualopt_mm.optim.foreach`).

``lerp_`` toward :math:`a` (``lerp_(a, \lambda)``: exactly :math:`a` at :math:`\lambda = 1`),
or ``mul_`` by :math:`1 - \lambda` for :math:`a = 0`; an anchor of another dtype
(``anchor_dtype='bfloat16'``) is upcast one chunk at a time.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..compat.torch_features import foreach_lerp_takes_scalar_list
from .foreach import FOREACH_DEVICES, bucket_chunks, chunk_numel, upcast_slices

__all__ = ['apply_review', 'foreach_lerp_', 'review_multi_tensor', 'review_single_tensor',
           'review_tensor_']


def review_tensor_(param: Tensor, anchor: Optional[Tensor], weight: float) -> None:
    r""":math:`\theta \leftarrow \theta - \lambda(\theta - a)` for one tensor, in place.

    ``anchor=None`` means :math:`a = 0` (scratch mode): ``mul_(1 - weight)``; otherwise
    ``lerp_(a, weight)``, with an anchor of another dtype (``anchor_dtype='bfloat16'``) upcast
    to the tensor's dtype a slice at a time. ``weight`` is :math:`\lambda \in [0, 1]`; 1 lands
    exactly on :math:`a`.
    """
    if anchor is None:
        param.mul_(1.0 - weight)
    elif anchor.dtype == param.dtype:
        param.lerp_(anchor, weight)
    else:
        for param_slice, anchor_slice in upcast_slices(param, anchor):
            param_slice.lerp_(anchor_slice.to(param.dtype), weight)


def review_single_tensor(params: list[Tensor], anchors: list[Optional[Tensor]],
                         weights: list[float]) -> None:
    r"""Review step, one tensor at a time (the specification), skipping weights of 0.

    Args:
        params: the tensors :math:`\hat\theta` (already stepped), updated in place.
        anchors: :math:`a` per tensor; ``None`` means :math:`a = 0` (scratch mode).
        weights: :math:`\lambda` per tensor, in :math:`[0, 1]`.
    """
    for param, anchor, weight in zip(params, anchors, weights):
        if weight != 0.0:
            review_tensor_(param, anchor, weight)


def review_multi_tensor(params: list[Tensor], anchors: list[Optional[Tensor]],
                        weights: list[float]) -> None:
    """:func:`review_single_tensor` with ``torch._foreach_lerp_`` / ``torch._foreach_mul_``
    (the same operations), bucketed by device, dtype and anchor dtype."""
    active = [i for i, w in enumerate(weights) if w != 0.0]
    if not active:
        return
    params = [params[i] for i in active]
    anchors = [anchors[i] for i in active]
    weights = [weights[i] for i in active]
    kinds = [None if a is None else a.dtype for a in anchors]
    for (_, dtype, anchor_dtype), idx in bucket_chunks(params, kinds):
        chunk_params = [params[i] for i in idx]
        chunk_weights = [weights[i] for i in idx]
        if anchor_dtype is None:  # scratch: a = 0
            torch._foreach_mul_(chunk_params, [1.0 - w for w in chunk_weights])
        elif anchor_dtype == dtype:
            foreach_lerp_(chunk_params, [anchors[i] for i in idx], chunk_weights)
        else:  # low-precision anchors: upcast at most one chunk of elements per call
            limit = chunk_numel(chunk_params[0].device)
            batch: list[tuple[Tensor, Tensor, float]] = []
            numel = 0
            for i in idx:
                for param_slice, anchor_slice in upcast_slices(params[i], anchors[i]):
                    if batch and numel + param_slice.numel() > limit:
                        _lerp_upcast(batch, dtype)
                        batch, numel = [], 0
                    batch.append((param_slice, anchor_slice, weights[i]))
                    numel += param_slice.numel()
            _lerp_upcast(batch, dtype)


def foreach_lerp_(params: list[Tensor], ends: list[Tensor], weights: list[float]) -> None:
    """``param.lerp_(end, weight)`` for each triple, with as few foreach calls as the installed
    torch allows: one (a weight per tensor) where torch has that form, else one per distinct
    weight (torch 2.0 / 2.1 take one scalar weight per call); the same kernel either way."""
    if foreach_lerp_takes_scalar_list():
        torch._foreach_lerp_(params, ends, weights)
        return
    by_weight: dict[float, list[int]] = {}
    for i, weight in enumerate(weights):
        by_weight.setdefault(weight, []).append(i)
    for weight, idx in by_weight.items():
        torch._foreach_lerp_([params[i] for i in idx], [ends[i] for i in idx], weight)


def _lerp_upcast(batch: list[tuple[Tensor, Tensor, float]], dtype: torch.dtype) -> None:
    foreach_lerp_([p for p, _, _ in batch], [a.to(dtype) for _, a, _ in batch],
                  [w for _, _, w in batch])


def apply_review(params: list[Tensor], anchors: list[Optional[Tensor]], weights: list[float],
                 *, foreach: Optional[bool] = None) -> None:
    """Public entry to the review step (e.g. for a hook reviewing another optimizer's step).

    ``foreach=None`` picks the foreach path when every tensor is on CUDA (as torch does).
    """
    if foreach is None:
        foreach = all(p.device.type in FOREACH_DEVICES for p in params)
    (review_multi_tensor if foreach else review_single_tensor)(params, anchors, weights)
