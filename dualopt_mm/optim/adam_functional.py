r"""The Adam / AdamW learning step then the review step, three functionals of one signature:
the per-tensor loop (the specification), its ``torch._foreach_*`` twin, and the fused path
(torch's fused Adam / AdamW kernel, then the review on the same chunk of memory). The
optimizer class (:mod:`~dualopt_mm.optim.adam`) collects the tensors and picks one per batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..compat.torch_features import fused_kernel
from .foreach import bucket_chunks
from .fused import (
    fused_chunks,
    no_amp_tensors,
    review_chunk_,
    split_by_kernel,
    take,
    undo_steps_on_inf,
)
from .native import native_kernels
from .review import review_multi_tensor, review_tensor_

__all__ = ['ADAM_FUNCTIONALS']


def _single_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    bias_steps: Optional[list[float]],
    beta1: float,
    beta2: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    r"""Adam / AdamW learning step :math:`\theta \to \hat\theta` then the review step
    :math:`\hat\theta - \lambda(\hat\theta - a)`, one tensor at a time: the specification.

    The learning step is torch's ``_single_tensor_adam``, operation for operation, with a
    per-tensor ``lr`` and ``weight_decay``; ``bias_steps`` (reference mode) replaces the
    tensors' own step counts in the bias corrections. ``anchors`` / ``review_weights`` are
    :math:`a` (``None``: :math:`a = 0`) and :math:`\lambda` (0: no review) per tensor.
    ``grad_scale`` / ``found_inf`` are the fused path's (``DualOptOptimizer.step`` unscales
    and skips for the other paths) and must be ``None`` here.
    """
    no_amp_tensors(grad_scale, found_inf)
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        exp_avg = exp_avgs[i]
        exp_avg_sq = exp_avg_sqs[i]
        step_t = state_steps[i]
        lr, weight_decay = lrs[i], weight_decays[i]

        step_t += 1
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        # first and second moment running averages
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        step = float(step_t) if bias_steps is None else bias_steps[i]
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5

        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = (max_exp_avg_sqs[i].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)

        if review_weights[i] != 0.0:
            review_tensor_(param, anchors[i], review_weights[i])



def _multi_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    bias_steps: Optional[list[float]],
    beta1: float,
    beta2: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """:func:`_single_tensor_adam` with ``torch._foreach_*`` ops over all the tensors at once,
    bucketed by device and dtype (and by weight decay when it is coupled) and chunked: same
    signature, same operations, same results."""
    no_amp_tensors(grad_scale, found_inf)
    if not params:
        return
    # coupled decay is a single alpha per foreach call: bucket by its value too
    coupled_decays = [0.0] * len(params) if decoupled_weight_decay else weight_decays
    for (_, _, coupled_decay), idx in bucket_chunks(params, coupled_decays):
        device_params = [params[i] for i in idx]
        device_grads = [grads[i] for i in idx]
        device_exp_avgs = [exp_avgs[i] for i in idx]
        device_exp_avg_sqs = [exp_avg_sqs[i] for i in idx]
        device_state_steps = [state_steps[i] for i in idx]
        device_lrs = [lrs[i] for i in idx]

        if maximize:
            device_grads = torch._foreach_neg(device_grads)

        torch._foreach_add_(device_state_steps, 1)
        if decoupled_weight_decay:
            decayed = [j for j, i in enumerate(idx) if weight_decays[i] != 0]
            if decayed:
                torch._foreach_mul_([device_params[j] for j in decayed],
                                    [1 - device_lrs[j] * weight_decays[idx[j]]
                                     for j in decayed])
        elif coupled_decay != 0:
            if maximize:  # device_grads is already a copy
                torch._foreach_add_(device_grads, device_params, alpha=coupled_decay)
            else:
                device_grads = torch._foreach_add(device_grads, device_params,
                                                  alpha=coupled_decay)

        # first and second moment running averages
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1 - beta2)
        del device_grads

        if bias_steps is None:
            steps = [float(s) for s in device_state_steps]  # host tensors: no device sync
        else:
            steps = [bias_steps[i] for i in idx]
        bias_correction1 = [1 - beta1**s for s in steps]
        bias_correction2 = [1 - beta2**s for s in steps]
        step_size = [(lr / bc) * -1 for lr, bc in zip(device_lrs, bias_correction1)]
        bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]

        if amsgrad:
            device_max_exp_avg_sqs = [max_exp_avg_sqs[i] for i in idx]
            torch._foreach_maximum_(device_max_exp_avg_sqs, device_exp_avg_sqs)
            denom = torch._foreach_sqrt(device_max_exp_avg_sqs)
        else:
            denom = torch._foreach_sqrt(device_exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(device_params, device_exp_avgs, denom, step_size)
        del denom

        review_multi_tensor(device_params, [anchors[i] for i in idx],
                            [review_weights[i] for i in idx])

def _fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lrs: list[float],
    weight_decays: list[float],
    anchors: list[Optional[Tensor]],
    review_weights: list[float],
    bias_steps: Optional[list[float]],
    beta1: float,
    beta2: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """:func:`_single_tensor_adam` in one pass over memory: on CPU, float32 / float64
    tensors take the native kernels (:mod:`~dualopt_mm.optim.native`: the loop's operations
    and the review, element by element); the others torch's fused kernel
    (``torch._fused_adam_`` / ``_fused_adamw_``) then the review of the same chunk
    (:mod:`~dualopt_mm.optim.fused`), the same step up to the kernel's rounding (it computes
    in float32 for 16-bit tensors). Same signature as the loop.

    ``state_steps`` are float32 tensors on the parameters' device (as torch's fused Adam keeps
    them); ``bias_steps`` (reference mode) are passed to the kernel as step tensors of their
    own. ``grad_scale`` / ``found_inf``: ``GradScaler``'s, on the device: the kernel unscales
    the gradients and skips an inf step, the review weights are masked, the step counts are
    taken back.
    """
    if not params:
        return
    name = 'adamw' if decoupled_weight_decay else 'adam'
    maxes: list[Optional[Tensor]] = list(max_exp_avg_sqs) if amsgrad else [None] * len(params)
    kernels = native_kernels() if grad_scale is None and found_inf is None else None
    # native kernels, torch's kernel, foreach (no kernel)
    native, rest, other = split_by_kernel(
        name, params, anchors, list(zip(grads, exp_avgs, exp_avg_sqs, maxes)), kernels)
    if other:  # a torch without a working kernel for these: the foreach path, same step
        _multi_tensor_adam(
            [params[i] for i in other], [grads[i] for i in other],
            [exp_avgs[i] for i in other], [exp_avg_sqs[i] for i in other],
            [max_exp_avg_sqs[i] for i in other] if amsgrad else [],
            [state_steps[i] for i in other], lrs=[lrs[i] for i in other],
            weight_decays=[weight_decays[i] for i in other],
            anchors=[anchors[i] for i in other],
            review_weights=[review_weights[i] for i in other],
            bias_steps=None if bias_steps is None else [bias_steps[i] for i in other],
            beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay)
    if native:  # CPU float32 / float64: one pass, the loop's operations
        torch._foreach_add_([state_steps[i] for i in native], 1)
        jobs = []
        for i in native:
            p = params[i]
            lr, weight_decay = lrs[i], weight_decays[i]
            step = float(state_steps[i]) if bias_steps is None else bias_steps[i]
            decoupled = decoupled_weight_decay and weight_decay != 0
            jobs.append((p.dtype, int(amsgrad), kernels.anchor_kind(p, anchors[i]),
                         [p, grads[i], exp_avgs[i], exp_avg_sqs[i], maxes[i], anchors[i]],
                         (-1.0 if maximize else 1.0, 1 - lr * weight_decay if decoupled else 1.0,
                          0.0 if decoupled_weight_decay else weight_decay, 1 - beta1, beta2,
                          1 - beta2, -(lr / (1 - beta1**step)), (1 - beta2**step)**0.5, eps,
                          review_weights[i])))
        kernels.run('adam', jobs)
    if not rest:
        return

    def sub(values: list) -> list:
        return [values[i] for i in rest]

    params, grads, exp_avgs, exp_avg_sqs = sub(params), sub(grads), sub(exp_avgs), \
        sub(exp_avg_sqs)
    maxes, state_steps, anchors = sub(maxes), sub(state_steps), sub(anchors)
    lrs, weight_decays, review_weights = sub(lrs), sub(weight_decays), sub(review_weights)
    bias_steps = None if bias_steps is None else sub(bias_steps)
    torch._foreach_add_(state_steps, 1)
    biases = bias_steps if bias_steps is not None else [None] * len(params)
    keys = list(zip(lrs, weight_decays, biases))
    others = [grads, exp_avgs, exp_avg_sqs, maxes, anchors]
    bias_tensors: dict[tuple, Tensor] = {}
    for (device, dtype, (lr, weight_decay, bias_step)), chunk in fused_chunks(params, keys,
                                                                              others):
        kernel = fused_kernel(name, device.type, dtype)
        steps = [state_steps[i] for i, _ in chunk]
        if bias_step is not None:  # AdamB: the group's step count in the bias corrections
            key = (device, bias_step)
            if key not in bias_tensors:
                bias_tensors[key] = torch.full((), float(bias_step), dtype=torch.float32,
                                               device=device)
            steps = [bias_tensors[key]] * len(chunk)
        chunk_params = take(params, chunk)
        kernel(chunk_params, take(grads, chunk), take(exp_avgs, chunk),
               take(exp_avg_sqs, chunk), take(maxes, chunk) if amsgrad else [],
               steps, amsgrad=amsgrad, lr=lr, beta1=beta1, beta2=beta2,
               weight_decay=weight_decay, eps=eps, maximize=maximize,
               grad_scale=None if grad_scale is None else grad_scale.to(device),
               found_inf=None if found_inf is None else found_inf.to(device))
        review_chunk_(chunk_params, take(anchors, chunk), [review_weights[i] for i, _ in chunk],
                      None if found_inf is None else 1 - found_inf.to(device))
    undo_steps_on_inf(state_steps, found_inf)


#: the functional of each path
ADAM_FUNCTIONALS = {'loop': _single_tensor_adam, 'foreach': _multi_tensor_adam,
                    'fused': _fused_adam}
