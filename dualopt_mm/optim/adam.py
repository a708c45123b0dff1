r"""DualOptAdam and DualOptAdamW: torch's Adam / AdamW followed by the DualOpt review step."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .base import DualOptOptimizer, ReviewBatch, _ParamsT, check_lr, check_unsupported_flags
from .foreach import bucket_chunks
from .hyperparams import review_kwargs
from .review import review_multi_tensor, review_tensor_

__all__ = ['DualOptAdam', 'DualOptAdamW']


def _scalar_dtype() -> torch.dtype:
    # the dtype torch's Adam gives state['step'] (float64 under a float64 default dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _AdamBatch(ReviewBatch):
    __slots__ = ('exp_avgs', 'exp_avg_sqs', 'max_exp_avg_sqs', 'state_steps', 'bias_steps')

    def __init__(self, group: dict[str, Any]) -> None:
        super().__init__(group)
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.max_exp_avg_sqs: list[Tensor] = []
        self.state_steps: list[Tensor] = []
        self.bias_steps: Optional[list[float]] = [] if group['reference'] else None


class DualOptAdam(DualOptOptimizer):
    r"""Adam (or AdamW) with the DualOpt / OLOR review step.

    The learning step :math:`\theta \to \hat\theta` is ``torch.optim.Adam`` / ``AdamW``,
    operation for operation (``u_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)``, AMSGrad,
    ``maximize``, coupled or decoupled ``weight_decay``); the review step that follows, its
    weight :math:`\lambda` and the levels :math:`k_i` are those of :mod:`dualopt_mm.optim`.
    :math:`t` is the tensor's own step count (state ``'step'``), as in torch. With :math:`k = 0` (or
    ``mode='none'``) this is ``torch.optim.Adam`` / ``AdamW`` exactly, parameters and state.

    ``weight_decay`` keeps torch's meaning (coupled L2 for Adam, decoupled for AdamW) and acts
    in addition to the review. The reference experiments use ``weight_decay=0`` with rollback;
    in scratch mode the review *is* a layer-wise weight decay, so set ``weight_decay=0`` there.

    ``reference=True`` reproduces the authors' AdamB (rainbow-xiao/OLOR-AAAI-2024,
    ``OLOR/utils/AdamB.py``; re-implemented here, not copied): the layer index is the tensor's
    position :math:`i` in its param group out of :math:`N + 1` = ``len(group['params'])``, the
    level is :math:`k_{min} + (1 - (i/N + \epsilon))^{\gamma}(k_{max} - k_{min})` (Adam's
    :math:`\epsilon` inside the base) and the bias correction uses a per-group step count
    (group key ``'reference_step'``, incremented at every ``step()`` whether or not the
    tensors have gradients). Combine with ``k_unit='absolute'`` and ``k_max = 0.01 / lr``,
    ``k_min=0``, ``gamma=1``, ``weight_decay=0`` for the paper's setting. The reference has no
    weight decay; torch's is still applied here if set.

    Args:
        params: iterable of tensors or of param-group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`w`, torch's semantics (default 0; AdamW: 1e-2).
        amsgrad: use the AMSGrad maximum of :math:`v` (default False).
        foreach: ``True``: ``torch._foreach_*`` path across all param groups; ``False``: the
            per-tensor loop; ``None``: foreach when all tensors are on CUDA, as torch does.
        maximize: maximize the objective (default False).
        capturable, differentiable, fused: accepted as ``False`` / ``None`` only.
        decoupled_weight_decay: AdamW's decoupled decay (default False; AdamW forces True).
        reference: reproduce the authors' AdamB (see above; default False).
        **review: the review hyper-parameters by name (``mode``, ``k_max``, ``k_min``,
            ``gamma``, ``k_unit``, ``reverse``, ``skip_1d``, ``layer_id``, ``num_layers``,
            ``base_lr``, ``anchor_dtype``): :mod:`dualopt_mm.optim.hyperparams`.
    """

    def __init__(
        self,
        params: _ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        reference: bool = False,
        **review: Any,
    ) -> None:
        check_unsupported_flags(capturable=capturable, differentiable=differentiable,
                                fused=fused)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            decoupled_weight_decay=decoupled_weight_decay,
            reference=reference,
            **review_kwargs(review, type(self).__name__),
        )
        self._check_hyperparameters(defaults, '')
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        check_lr(group['lr'], where)
        eps, betas, weight_decay = group['eps'], group['betas'], group['weight_decay']
        if not 0.0 <= eps:
            raise ValueError(f'Invalid epsilon value: {eps}{where}')
        if len(betas) != 2 or any(isinstance(b, Tensor) for b in betas):
            raise ValueError(f'betas must be a pair of floats, got {betas!r}{where}')
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f'Invalid beta parameter at index 0: {betas[0]}{where}')
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f'Invalid beta parameter at index 1: {betas[1]}{where}')
        if not 0.0 <= weight_decay:
            raise ValueError(f'Invalid weight_decay value: {weight_decay}{where}')

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group['betas'] = tuple(group['betas'])

    def _start_group(self, group: dict[str, Any]) -> None:
        if group['reference']:  # AdamB counts bias-correction steps per group
            group['reference_step'] = group.get('reference_step', 0) + 1

    def _static_key(self, group: dict[str, Any]) -> tuple:
        return (tuple(group['betas']), group['eps'], group['amsgrad'], group['maximize'],
                group['decoupled_weight_decay'], group['reference'])

    def _new_batch(self, group: dict[str, Any]) -> _AdamBatch:
        return _AdamBatch(group)

    def _collect(self, batch: _AdamBatch, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        if 'step' not in state:  # lazy state initialization, as torch
            state['step'] = torch.tensor(0.0, dtype=_scalar_dtype())
            state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        batch.params.append(p)
        batch.grads.append(grad)
        batch.lrs.append(float(group['lr']))
        batch.weight_decays.append(float(group['weight_decay']))
        batch.exp_avgs.append(state['exp_avg'])
        batch.exp_avg_sqs.append(state['exp_avg_sq'])
        if group['amsgrad']:
            if 'max_exp_avg_sq' not in state:
                state['max_exp_avg_sq'] = torch.zeros_like(
                    p, memory_format=torch.preserve_format)
            batch.max_exp_avg_sqs.append(state['max_exp_avg_sq'])
        batch.state_steps.append(state['step'])
        if batch.bias_steps is not None:
            batch.bias_steps.append(group['reference_step'])

    def _update(self, batch: _AdamBatch, foreach: bool) -> None:
        group = batch.group
        beta1, beta2 = group['betas']
        adam = _multi_tensor_adam if foreach else _single_tensor_adam
        adam(batch.params, batch.grads, batch.exp_avgs, batch.exp_avg_sqs,
             batch.max_exp_avg_sqs, batch.state_steps, lrs=batch.lrs,
             weight_decays=batch.weight_decays, anchors=batch.anchors,
             review_weights=batch.review_weights, bias_steps=batch.bias_steps, beta1=beta1,
             beta2=beta2, eps=group['eps'], amsgrad=group['amsgrad'],
             maximize=group['maximize'],
             decoupled_weight_decay=group['decoupled_weight_decay'])


class DualOptAdamW(DualOptAdam):
    r"""AdamW with the DualOpt / OLOR review step: :class:`DualOptAdam` with
    ``decoupled_weight_decay=True`` (and torch AdamW's default ``weight_decay=1e-2``).

    See :class:`DualOptAdam` for the algorithm and the arguments.
    """

    def __init__(
        self,
        params: _ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        reference: bool = False,
        **review: Any,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, reference=reference, **review)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's AdamW: always decoupled
            group['decoupled_weight_decay'] = True


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
) -> None:
    r"""Adam / AdamW learning step :math:`\theta \to \hat\theta` then the review step
    :math:`\hat\theta - \lambda(\hat\theta - a)`, one tensor at a time: the specification.

    The learning step is torch's ``_single_tensor_adam``, operation for operation, with a
    per-tensor ``lr`` and ``weight_decay``; ``bias_steps`` (reference mode) replaces the
    tensors' own step counts in the bias corrections. ``anchors`` / ``review_weights`` are
    :math:`a` (``None``: :math:`a = 0`) and :math:`\lambda` (0: no review) per tensor.
    """
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
) -> None:
    """:func:`_single_tensor_adam` with ``torch._foreach_*`` ops over all the tensors at once,
    bucketed by device and dtype (and by weight decay when it is coupled) and chunked: same
    signature, same operations, same results."""
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
