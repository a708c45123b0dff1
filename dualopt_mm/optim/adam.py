r"""DualOptAdam and DualOptAdamW: torch's Adam / AdamW followed by the DualOpt review step."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import adam_functional
from .base import DualOptOptimizer, ReviewBatch, _ParamsT
from .groups import check_flags, check_lr
from .hyperparams import review_kwargs

__all__ = ['DualOptAdam', 'DualOptAdamW']


def _scalar_dtype() -> torch.dtype:
    # the dtype torch's Adam gives state['step'] (float64 under a float64 default dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _AdamBatch(ReviewBatch):
    __slots__ = ('exp_avgs', 'exp_avg_sqs', 'max_exp_avg_sqs', 'state_steps', 'bias_steps')

    def __init__(self, group: dict[str, Any], path: str) -> None:
        super().__init__(group, path)
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
        fused: ``True``: learning step and review in one pass over memory, across all param
            groups (CPU and CUDA: :mod:`~dualopt_mm.optim.native`, or torch's fused Adam /
            AdamW kernel then the review; where torch lacks a working kernel, the foreach
            path, said once); ``None`` / ``False``: as ``foreach`` says.
        capturable, differentiable: accepted as ``False`` / ``None`` only.
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
        check_flags(capturable=capturable, differentiable=differentiable, fused=fused,
                    foreach=foreach)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
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

    def _fused_kernel_name(self, group: dict[str, Any]) -> str:
        return 'adamw' if group['decoupled_weight_decay'] else 'adam'

    def _static_key(self, group: dict[str, Any]) -> tuple:
        return (tuple(group['betas']), group['eps'], group['amsgrad'], group['maximize'],
                group['decoupled_weight_decay'], group['reference'])

    def _new_batch(self, group: dict[str, Any], path: str) -> _AdamBatch:
        return _AdamBatch(group, path)

    def _collect(self, batch: _AdamBatch, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        fused = batch.path == 'fused'
        if 'step' not in state:  # lazy state initialization, as torch
            state['step'] = (torch.zeros((), dtype=torch.float32, device=p.device) if fused
                             else torch.tensor(0.0, dtype=_scalar_dtype()))
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
        step = state['step']
        if fused and (step.device != p.device or step.dtype != torch.float32):
            step = state['step'] = step.to(p.device, torch.float32)  # as torch's fused Adam
        batch.state_steps.append(step)
        if batch.bias_steps is not None:
            batch.bias_steps.append(group['reference_step'])

    def _update(self, batch: _AdamBatch, grad_scale: Optional[Tensor],
                found_inf: Optional[Tensor]) -> None:
        group = batch.group
        beta1, beta2 = group['betas']
        adam = adam_functional.ADAM_FUNCTIONALS[batch.path]
        adam(batch.params, batch.grads, batch.exp_avgs, batch.exp_avg_sqs,
             batch.max_exp_avg_sqs, batch.state_steps, lrs=batch.lrs,
             weight_decays=batch.weight_decays, anchors=batch.anchors,
             review_weights=batch.review_weights, bias_steps=batch.bias_steps, beta1=beta1,
             beta2=beta2, eps=group['eps'], amsgrad=group['amsgrad'],
             maximize=group['maximize'],
             decoupled_weight_decay=group['decoupled_weight_decay'],
             grad_scale=grad_scale, found_inf=found_inf)


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
