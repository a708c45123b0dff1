r"""DualOptSGD: torch's SGD (momentum, dampening, Nesterov) followed by the DualOpt review step."""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from . import sgd_functional
from .base import DualOptOptimizer, ReviewBatch, _ParamsT
from .groups import check_flags, check_lr
from .hyperparams import review_kwargs

__all__ = ['DualOptSGD']


class _SGDBatch(ReviewBatch):
    __slots__ = ('states', 'momentum_buffers')

    def __init__(self, group: dict[str, Any], path: str) -> None:
        super().__init__(group, path)
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
        fused: ``True``: learning step and review in one pass over memory, across all param
            groups (CPU and CUDA: :mod:`~dualopt_mm.optim.native`, or torch's fused SGD kernel
            then the review; where torch lacks a working kernel, the foreach path, said once);
            ``None`` / ``False``: as ``foreach`` says.
        differentiable: accepted as ``False`` / ``None`` only.
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
        check_flags(differentiable=differentiable, fused=fused, foreach=foreach)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
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

    def _fused_kernel_name(self, group: dict[str, Any]) -> str:
        return 'sgd'

    def _static_key(self, group: dict[str, Any]) -> tuple:
        return (group['momentum'], group['dampening'], group['nesterov'], group['maximize'])

    def _new_batch(self, group: dict[str, Any], path: str) -> _SGDBatch:
        return _SGDBatch(group, path)

    def _collect(self, batch: _SGDBatch, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        batch.params.append(p)
        batch.grads.append(grad)
        batch.lrs.append(float(group['lr']))
        batch.weight_decays.append(float(group['weight_decay']))
        batch.states.append(state)
        batch.momentum_buffers.append(state.get('momentum_buffer'))

    def _update(self, batch: _SGDBatch, grad_scale: Optional[Tensor],
                found_inf: Optional[Tensor]) -> None:
        group = batch.group
        sgd = sgd_functional.SGD_FUNCTIONALS[batch.path]
        sgd(batch.params, batch.grads, batch.momentum_buffers, lrs=batch.lrs,
            weight_decays=batch.weight_decays, anchors=batch.anchors,
            review_weights=batch.review_weights, momentum=group['momentum'],
            dampening=group['dampening'], nesterov=group['nesterov'],
            maximize=group['maximize'], grad_scale=grad_scale, found_inf=found_inf)
        if group['momentum'] != 0:
            for state, buf in zip(batch.states, batch.momentum_buffers):
                state['momentum_buffer'] = buf
