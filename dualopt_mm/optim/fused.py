r"""The fused paths on torch's kernels: torch's fused kernel, then the review on the same chunk.

Where the native CPU kernels (:mod:`~dualopt_mm.optim.native`: learning step and review in one
pass) do not apply (16-bit tensors, GPUs, ``GradScaler`` steps, no C compiler), a fused step
calls torch's own fused kernel of the base optimizer (``torch._fused_sgd_``,
``_fused_adam_``, ``_fused_adamw_``: one pass over parameters, gradients and state) on a chunk
of tensors, then the review step :math:`\theta \leftarrow \hat\theta - \lambda(\hat\theta - a)`
on the same chunk, which bounds the transient memory of a 16-bit anchor's upcast to one
chunk (measured on CPU, docs/benchmarks.md: the review pass then costs about what a copy of
the parameters costs, cache or not; the native kernels avoid it). On CPU a chunk is at most
:data:`FUSED_CHUNK_NUMEL_CPU` elements (a larger contiguous tensor is cut into flat slices); on
accelerators a chunk is as large as the foreach paths' (few kernel launches). The chunks run
across all param groups: tensors are bucketed by device, dtype and the hyper-parameters the
kernel takes as scalars (``lr``, ``weight_decay``, ...), so mmengine's one group per tensor
costs no call per group. Only shapes are read: no host synchronisation.

With ``found_inf`` on the device (``GradScaler`` on CUDA) the kernels skip their update and
the review weights are multiplied by :math:`1 - \text{found\_inf}` on the device.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Optional, cast

import torch
from torch import Tensor

from ..compat.torch_features import fused_kernel
from .foreach import chunk_numel
from .native import NativeKernels
from .review import foreach_lerp_

__all__ = ['FUSED_CHUNK_NUMEL_CPU', 'FusedChunk', 'fused_chunks', 'review_chunk_', 'no_amp_tensors',
           'split_by_kernel', 'take', 'undo_steps_on_inf']

#: Elements per fused chunk on CPU (4 MiB of float32 per tensor).
FUSED_CHUNK_NUMEL_CPU = 1 << 20

#: One chunk: (tensor index, flat slice or None for the whole tensor) pairs.
FusedChunk = list[tuple[int, Optional[slice]]]


def split_by_kernel(kernel: str, params: Sequence[Tensor], anchors: Sequence[Optional[Tensor]],
                    others: Sequence[Sequence[Optional[Tensor]]],
                    kernels: Optional[NativeKernels]) -> tuple[list[int], list[int], list[int]]:
    """Indices of the tensors for each kernel of a fused step: the native kernels (when given
    and they take the tensor, its anchor and ``others[i]``: its gradient and state), torch's
    fused ``kernel`` (``'sgd'``, ``'adam'``, ``'adamw'``) where the installed torch has a
    working one for the device and dtype, and the rest (the foreach step, the same step)."""
    native: list[int] = []
    torch_kernel: list[int] = []
    rest: list[int] = []
    for i, p in enumerate(params):
        if kernels is not None and kernels.supports(p, anchors[i], list(others[i])):
            native.append(i)
        else:
            (torch_kernel if fused_kernel(kernel, p.device.type, p.dtype) else rest).append(i)
    return native, torch_kernel, rest


def _limit(device: torch.device) -> int:
    return FUSED_CHUNK_NUMEL_CPU if device.type == 'cpu' else chunk_numel(device)


def fused_chunks(params: Sequence[Tensor], extra_keys: Sequence[Hashable],
                 others: Sequence[Sequence[Optional[Tensor]]]
                 ) -> list[tuple[tuple, FusedChunk]]:
    """``params`` bucketed by (device, dtype, extra key), first-seen order, and cut into
    chunks of at most one chunk's elements; a larger tensor is cut into flat slices when it
    and its companions in ``others`` (gradient, state, anchor: ``None`` entries skipped) are
    contiguous, else it is a chunk alone. Returns ``(key, chunk)`` pairs."""
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype, extra_keys[i]), []).append(i)
    chunks: list[tuple[tuple, FusedChunk]] = []
    for key, indices in buckets.items():
        limit = _limit(key[0])
        chunk: FusedChunk = []
        numel = 0
        for i in indices:
            n = params[i].numel()
            sliceable = n > limit and all(
                t is None or t.is_contiguous() for t in [params[i]] + [o[i] for o in others])
            pieces = ([slice(s, min(s + limit, n)) for s in range(0, n, limit)] if sliceable
                      else [None])
            for piece in pieces:
                size = n if piece is None else piece.stop - piece.start
                if chunk and numel + size > limit:
                    chunks.append((key, chunk))
                    chunk, numel = [], 0
                chunk.append((i, piece))
                numel += size
        if chunk:
            chunks.append((key, chunk))
    return chunks


def take(tensors: Sequence[Optional[Tensor]], chunk: FusedChunk) -> list[Optional[Tensor]]:
    """The chunk's pieces of ``tensors`` (a flat slice view, or the tensor itself; ``None``
    stays ``None``: an anchor of :math:`a = 0`)."""
    out: list[Optional[Tensor]] = []
    for i, piece in chunk:
        t = tensors[i]
        out.append(t if piece is None or t is None else t.view(-1)[piece])
    return out


def review_chunk_(params: list[Tensor], anchors: list[Optional[Tensor]], weights: list[float],
                  keep: Optional[Tensor] = None) -> None:
    r"""The review step on one chunk, in place: ``lerp_`` toward :math:`a`, ``mul_`` by
    :math:`1 - \lambda` where :math:`a = 0` (``anchors[i] is None``), nothing where
    :math:`\lambda = 0`: the operations of :func:`~dualopt_mm.optim.review.review_tensor_`.

    Args:
        params: the chunk's pieces of :math:`\hat\theta` (one device and dtype).
        anchors: the matching pieces of :math:`a`, or ``None`` for :math:`a = 0`.
        weights: :math:`\lambda` per piece.
        keep: ``1 - found_inf`` on the device, or ``None``: the weights are multiplied by it
            (0-d tensors in the parameters' dtype) so an inf step reviews nothing, without a
            host synchronisation.
    """
    active = [j for j, w in enumerate(weights) if w != 0.0]
    if not active:
        return
    dtype = params[active[0]].dtype
    if keep is not None:
        masked = torch.tensor([weights[j] for j in active], dtype=dtype).to(
            params[active[0]].device, non_blocking=True) * keep.to(dtype)
        tensor_weights = dict(zip(active, masked.unbind(0)))
    scratch = [j for j in active if anchors[j] is None]
    lerped = [j for j in active if anchors[j] is not None]
    if scratch:
        ps = [params[j] for j in scratch]
        if keep is None:
            torch._foreach_mul_(ps, [1.0 - weights[j] for j in scratch])
        else:
            torch._foreach_mul_(ps, [1 - tensor_weights[j] for j in scratch])
    if lerped:
        ps = [params[j] for j in lerped]
        ends = []
        for j in lerped:
            anchor = cast(Tensor, anchors[j])
            ends.append(anchor if anchor.dtype == dtype else anchor.to(dtype))  # one chunk
        if keep is None:
            foreach_lerp_(ps, ends, [weights[j] for j in lerped])
        else:
            torch._foreach_lerp_(ps, ends, [tensor_weights[j] for j in lerped])


def no_amp_tensors(grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """Refuse ``grad_scale`` / ``found_inf`` outside the fused path (``step()`` unscales the
    gradients and skips inf steps for the loop and foreach paths)."""
    if grad_scale is not None or found_inf is not None:
        raise ValueError('grad_scale / found_inf are taken by the fused path only '
                         '(fused=True); the loop and foreach paths get unscaled gradients')


def undo_steps_on_inf(state_steps: list[Tensor], found_inf: Optional[Tensor]) -> None:
    """Take back the step-count increment of a skipped (inf/NaN) step on the device, as
    torch's fused optimizers do."""
    if found_inf is not None and state_steps:
        torch._foreach_sub_(state_steps, [found_inf.to(state_steps[0].device)]
                            * len(state_steps))
