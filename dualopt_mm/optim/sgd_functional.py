r"""The SGD learning step then the review step, three functionals of one signature: the
per-tensor loop (the specification), its ``torch._foreach_*`` twin, and the fused path
(torch's fused SGD kernel, then the review on the same chunk of memory). The optimizer class
(:mod:`~dualopt_mm.optim.sgd`) collects the tensors and picks one per batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..compat.torch_features import fused_kernel
from .foreach import bucket_chunks
from .fused import fused_chunks, no_amp_tensors, review_chunk_, split_by_kernel, take
from .native import native_kernels
from .review import review_multi_tensor, review_tensor_

__all__ = ['SGD_FUNCTIONALS']


def _single_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Optional[Tensor]],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    r"""SGD learning step :math:`\theta \to \hat\theta` then the review step
    :math:`\hat\theta - \lambda(\hat\theta - a)`, one tensor at a time: the specification.

    The learning step is torch's ``_single_tensor_sgd``, operation for operation, with a
    per-tensor ``lr`` and ``weight_decay``; new momentum buffers are written into
    ``momentum_buffers``. ``anchors`` / ``review_weights`` are :math:`a` (``None``:
    :math:`a = 0`) and :math:`\lambda` (0: no review) per tensor. ``grad_scale`` /
    ``found_inf`` are the fused path's and must be ``None`` here.
    """
    no_amp_tensors(grad_scale, found_inf)
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        if weight_decays[i] != 0:
            grad = grad.add(param, alpha=weight_decays[i])

        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf

        param.add_(grad, alpha=-lrs[i])

        if review_weights[i] != 0.0:
            review_tensor_(param, anchors[i], review_weights[i])


def _multi_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Optional[Tensor]],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """:func:`_single_tensor_sgd` with ``torch._foreach_*`` ops over all the tensors at once,
    bucketed by device, dtype, lr and weight decay (each a single alpha per foreach call) and
    chunked: same signature, same operations, same results. Unlike torch's foreach SGD,
    ``param.grad`` is never modified."""
    no_amp_tensors(grad_scale, found_inf)
    if not params:
        return
    keys = list(zip(lrs, weight_decays))
    for (_, _, (lr, weight_decay)), idx in bucket_chunks(params, keys):
        device_params = [params[i] for i in idx]
        device_grads = [grads[i] for i in idx]
        owns_grads = False  # whether device_grads are copies we may modify

        if maximize:
            device_grads = torch._foreach_neg(device_grads)
            owns_grads = True
        if weight_decay != 0:
            if owns_grads:
                torch._foreach_add_(device_grads, device_params, alpha=weight_decay)
            else:
                device_grads = torch._foreach_add(device_grads, device_params,
                                                  alpha=weight_decay)
                owns_grads = True

        if momentum != 0:
            bufs = [momentum_buffers[i] for i in idx]
            if all(buf is not None for buf in bufs):
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, device_grads, alpha=1 - dampening)
            else:  # first step of some tensors
                for j, i in enumerate(idx):
                    buf = bufs[j]
                    if buf is None:
                        buf = bufs[j] = momentum_buffers[i] = device_grads[j].detach().clone()
                    else:
                        buf.mul_(momentum).add_(device_grads[j], alpha=1 - dampening)
            if nesterov:
                if owns_grads:
                    torch._foreach_add_(device_grads, bufs, alpha=momentum)
                else:
                    device_grads = torch._foreach_add(device_grads, bufs, alpha=momentum)
            else:
                device_grads = bufs

        torch._foreach_add_(device_params, device_grads, alpha=-lr)
        del device_grads

        review_multi_tensor(device_params, [anchors[i] for i in idx],
                            [review_weights[i] for i in idx])

def _fused_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Optional[Tensor]],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """:func:`_single_tensor_sgd` in one pass over memory: on CPU, float32 / float64 tensors
    take the native kernels (:mod:`~dualopt_mm.optim.native`); the others torch's fused
    kernel (``torch._fused_sgd_``) then the review of the same chunk
    (:mod:`~dualopt_mm.optim.fused`), the same step up to the kernel's rounding (it computes
    in float32 for 16-bit tensors). Same signature as the loop.

    A tensor's first step gets a new buffer that the kernel fills with the gradient
    (``is_first_step``, as torch's fused SGD). ``grad_scale`` / ``found_inf``:
    ``GradScaler``'s, on the device: the kernel unscales the gradients and skips an inf step,
    the review weights are masked.
    """
    if not params:
        return
    kernels = native_kernels() if grad_scale is None and found_inf is None else None
    # native kernels, torch's kernel, foreach (no kernel)
    native, rest, other = split_by_kernel(
        'sgd', params, anchors,
        [(g, buf if momentum != 0 else None) for g, buf in zip(grads, momentum_buffers)], kernels)
    if other:  # a torch without a working kernel for these: the foreach path, same step
        bufs = [momentum_buffers[i] for i in other]
        _multi_tensor_sgd([params[i] for i in other], [grads[i] for i in other], bufs,
                          lrs=[lrs[i] for i in other],
                          weight_decays=[weight_decays[i] for i in other],
                          anchors=[anchors[i] for i in other],
                          review_weights=[review_weights[i] for i in other],
                          momentum=momentum, dampening=dampening, nesterov=nesterov,
                          maximize=maximize)
        for i, buf in zip(other, bufs):
            momentum_buffers[i] = buf
    first = [momentum != 0 and buf is None for buf in momentum_buffers]
    for i in native + rest:
        if first[i]:  # filled with the gradient by the kernel, as torch's fused SGD
            momentum_buffers[i] = torch.empty_like(params[i], memory_format=torch.preserve_format)
    if native:  # CPU float32 / float64: one pass, the loop's operations
        jobs = []
        for i in native:
            p = params[i]
            buf = momentum_buffers[i] if momentum != 0 else None
            jobs.append((p.dtype, int(buf is not None), kernels.anchor_kind(p, anchors[i]),
                         [p, grads[i], buf, anchors[i]],
                         (int(nesterov), int(first[i]), -1.0 if maximize else 1.0,
                          weight_decays[i], momentum, 1 - dampening, -lrs[i],
                          review_weights[i])))
        kernels.run('sgd', jobs)
    if not rest:
        return

    def sub(values: list) -> list:
        return [values[i] for i in rest]

    params, grads, momentum_buffers, anchors = sub(params), sub(grads), \
        sub(momentum_buffers), sub(anchors)
    lrs, weight_decays, review_weights, first = sub(lrs), sub(weight_decays), \
        sub(review_weights), sub(first)
    keys = list(zip(lrs, weight_decays, first))
    others = [grads, momentum_buffers, anchors]
    for (device, dtype, (lr, weight_decay, is_first)), chunk in fused_chunks(params, keys,
                                                                             others):
        kernel = fused_kernel('sgd', device.type, dtype)
        chunk_params = take(params, chunk)
        kernel(chunk_params, take(grads, chunk),
               take(momentum_buffers, chunk) if momentum != 0 else [],
               weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=dampening,
               nesterov=nesterov, maximize=maximize, is_first_step=is_first,
               grad_scale=None if grad_scale is None else grad_scale.to(device),
               found_inf=None if found_inf is None else found_inf.to(device))
        review_chunk_(chunk_params, take(anchors, chunk), [review_weights[i] for i, _ in chunk],
                      None if found_inf is None else 1 - found_inf.to(device))


#: the functional of each path
SGD_FUNCTIONALS = {'loop': _single_tensor_sgd, 'foreach': _multi_tensor_sgd, 'fused': _fused_sgd}
