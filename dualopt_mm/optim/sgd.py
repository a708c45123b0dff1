r"""DualOptSGD: torch's SGD (momentum, dampening, Nesterov) followed by the DualOpt review step."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .base import DualOptOptimizer, ReviewBatch, _ParamsT, check_lr, check_unsupported_flags
from .foreach import bucket_chunks
from .hyperparams import review_kwargs
from .review import review_multi_tensor, review_tensor_

__all__ = ['DualOptSGD']


class _SGDBatch(ReviewBatch):
    __slots__ = ('states', 'momentum_buffers')

    def __init__(self, group: dict[str, Any]) -> None:
        super().__init__(group)
        self.states: list[dict[str, Any]] = []
        self.momentum_buffers: list[Optional[Tensor]] = []


class DualOptSGD(DualOptOptimizer):
    r"""SGD (optionally with momentum) with the DualOpt / OLOR review step.

    The learning step :math:`\theta \to \hat\theta` is ``torch.optim.SGD``, operation for
    operation (:math:`u_t` is the momentum buffer with torch's ``momentum`` / ``dampening`` /
    ``nesterov`` semantics, coupled ``weight_decay``, ``maximize``, sparse gradients on the
    per-tensor path); the review step that follows is that of :mod:`dualopt_mm.optim`.

    This is the paper's real-time form with torch's momentum semantics (momentum buffer
    ``'momentum_buffer'`` in the state), the same review as :class:`DualOptAdam`. It is *not*
    the reference ``SGDB`` (OLOR/utils/SGDB.py), which uses an EMA momentum and, in its final
    version, rolls back before the update without the :math:`\eta` factor.
    With :math:`k = 0` (or ``mode='none'``) this is ``torch.optim.SGD`` exactly.

    ``weight_decay`` is torch's coupled L2 term and acts in addition to the review; in scratch
    mode the review *is* a layer-wise weight decay, so set ``weight_decay=0`` there.

    Args:
        params: iterable of tensors or of param-group dicts.
        lr: :math:`\eta` (default 1e-3).
        momentum: :math:`\mu` (default 0).
        dampening: :math:`\tau` (default 0).
        weight_decay: :math:`w` (default 0).
        nesterov: Nesterov momentum (default False).
        maximize: maximize the objective (default False).
        foreach: ``True``: ``torch._foreach_*`` path across all param groups; ``False``: the
            per-tensor loop; ``None``: foreach when all tensors are on CUDA, as torch does.
        differentiable, fused: accepted as ``False`` / ``None`` only.
        **review: the review hyper-parameters by name (``mode``, ``k_max``, ``k_min``,
            ``gamma``, ``k_unit``, ``reverse``, ``skip_1d``, ``layer_id``, ``num_layers``,
            ``base_lr``, ``anchor_dtype``): :mod:`dualopt_mm.optim.hyperparams`.
    """

    def __init__(
        self,
        params: _ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        **review: Any,
    ) -> None:
        check_unsupported_flags(differentiable=differentiable, fused=fused)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            **review_kwargs(review, type(self).__name__),
        )
        self._check_hyperparameters(defaults, '')
        super().__init__(params, defaults)

    #: sparse gradients (``nn.Embedding(sparse=True)``) take torch's SGD step on the per-tensor
    #: path; the review then acts on the dense parameter
    _supports_sparse = True

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        check_lr(group['lr'], where)
        if group['momentum'] < 0.0:
            raise ValueError(f'Invalid momentum value: {group["momentum"]}{where}')
        if group['weight_decay'] < 0.0:
            raise ValueError(f'Invalid weight_decay value: {group["weight_decay"]}{where}')
        if group['nesterov'] and (group['momentum'] <= 0 or group['dampening'] != 0):
            raise ValueError(f'Nesterov momentum requires a momentum and zero dampening{where}')

    def _static_key(self, group: dict[str, Any]) -> tuple:
        return (group['momentum'], group['dampening'], group['nesterov'], group['maximize'])

    def _new_batch(self, group: dict[str, Any]) -> _SGDBatch:
        return _SGDBatch(group)

    def _collect(self, batch: _SGDBatch, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        batch.params.append(p)
        batch.grads.append(grad)
        batch.lrs.append(float(group['lr']))
        batch.weight_decays.append(float(group['weight_decay']))
        batch.states.append(state)
        batch.momentum_buffers.append(state.get('momentum_buffer'))

    def _update(self, batch: _SGDBatch, foreach: bool) -> None:
        group = batch.group
        sgd = _multi_tensor_sgd if foreach else _single_tensor_sgd
        sgd(batch.params, batch.grads, batch.momentum_buffers, lrs=batch.lrs,
            weight_decays=batch.weight_decays, anchors=batch.anchors,
            review_weights=batch.review_weights, momentum=group['momentum'],
            dampening=group['dampening'], nesterov=group['nesterov'],
            maximize=group['maximize'])
        if group['momentum'] != 0:
            for state, buf in zip(batch.states, batch.momentum_buffers):
                state['momentum_buffer'] = buf


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
) -> None:
    r"""SGD learning step :math:`\theta \to \hat\theta` then the review step
    :math:`\hat\theta - \lambda(\hat\theta - a)`, one tensor at a time: the specification.

    The learning step is torch's ``_single_tensor_sgd``, operation for operation, with a
    per-tensor ``lr`` and ``weight_decay``; new momentum buffers are written into
    ``momentum_buffers``. ``anchors`` / ``review_weights`` are :math:`a` (``None``:
    :math:`a = 0`) and :math:`\lambda` (0: no review) per tensor.
    """
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
) -> None:
    """:func:`_single_tensor_sgd` with ``torch._foreach_*`` ops over all the tensors at once,
    bucketed by device, dtype, lr and weight decay (each a single alpha per foreach call) and
    chunked: same signature, same operations, same results. Unlike torch's foreach SGD,
    ``param.grad`` is never modified."""
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
