r"""The base class of the DualOpt optimizers and its ``step()``: validate, collect the tensors
with gradients into batches, then run one functional per batch (learning step, then review).

The rule is in :mod:`dualopt_mm.optim`; the hyper-parameters in
:mod:`~dualopt_mm.optim.hyperparams`; the levels in :mod:`~dualopt_mm.optim.layer_levels`; the
anchors and checkpoint rules in :mod:`~dualopt_mm.optim.state`. A subclass adds its base
optimizer through four small methods (:meth:`DualOptOptimizer._static_key`, ``_new_batch``,
``_collect``, ``_update``) and three functionals of one signature: the per-tensor loop (the
specification), its ``torch._foreach_*`` twin and the fused path (one pass over memory:
native CPU kernels, or torch's fused kernel then the review of the same chunk). ``step()``
chooses the path of every tensor.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..compat.torch_features import fused_kernel, torch_version
from .foreach import FOREACH_DEVICES
from .groups import (
    FOREIGN_GROUP_KEYS,
    ParamsT,
    ReviewBatch,
    check_flags,
    group_label,
    param_label,
    reviews_itself,
)
from .hyperparams import anchor_dtype_name, check_review_group, check_unknown_keys
from .layer_levels import LayerLevelsMixin
from .native import native_kernels
from .state import StateMixin

__all__ = ['DualOptOptimizer', 'ReviewBatch', 'group_label', 'param_label', 'reviews_itself']

_ParamsT = ParamsT  # the name the subclasses import

# (class name, device type, dtype) already told that torch lacks a working fused kernel
_told_no_fused: set[tuple[str, str, str]] = set()


class DualOptOptimizer(LayerLevelsMixin, StateMixin, Optimizer):
    r"""Base class of :class:`DualOptSGD`, :class:`DualOptAdam` and :class:`DualOptAdamW`.

    It owns the DualOpt hyper-parameters, the anchors :math:`a`, the layer levels
    :math:`k_i`, the review weights :math:`\lambda` and the review step (the math is in
    :mod:`dualopt_mm.optim`); a subclass adds its base optimizer's state and update through
    four small methods (:meth:`_static_key`, :meth:`_new_batch`, :meth:`_collect`,
    :meth:`_update`) and names its fused kernel (:meth:`_fused_kernel_name`).

    The review hyper-parameters (:mod:`~dualopt_mm.optim.hyperparams`) are all in
    ``defaults``, so every param group carries them and mmengine param schedulers can drive
    them; any of them can be set per group, and a change is validated at the next step.

    Per-parameter state: the base optimizer's (torch's names) plus ``'anchor'`` (finetune mode,
    reviewed tensors only), captured before the tensor's first update.

    Paths (``foreach`` / ``fused``, per group): ``fused=True`` runs the learning step and the
    review in one pass over memory across all the groups' tensors at once (CPU float32 /
    float64: :mod:`~dualopt_mm.optim.native`; otherwise torch's fused kernel of the base
    optimizer, then the review on the same chunk); where the installed torch has no working
    such kernel for a device and dtype, it says so once and takes the foreach path.
    ``foreach=True`` / ``False``: the foreach path / the per-tensor loop; ``None`` (and
    ``fused=None``): foreach on CUDA, the loop elsewhere, as torch. Sparse gradients always
    take the loop. With every group fused, ``torch.amp.GradScaler`` hands the
    step its ``grad_scale`` / ``found_inf`` (``_step_supports_amp_scaling``): an inf/NaN step
    skips the learning step and the review alike.
    """

    #: whether the base optimizer takes sparse gradients (torch's SGD does, Adam does not)
    _supports_sparse = False

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        defaults['anchor_dtype'] = anchor_dtype_name(defaults['anchor_dtype'])
        self._invalidate_levels()
        self._step_supports_amp_scaling = False
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups
    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        """torch's own hyper-parameter checks for one group (subclasses)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch semantics), validating its hyper-parameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f' ({group_label(group, len(self.param_groups) - 1)})'
        try:
            check_unknown_keys(param_group, list(self.defaults) + list(FOREIGN_GROUP_KEYS),
                               where.strip(' ()'))
            check_flags(**{name: group.get(name) for name in
                           ('capturable', 'differentiable', 'fused', 'foreach')})
            self._check_hyperparameters(group, where)
            check_review_group(group, where.strip(' ()'))
            group['anchor_dtype'] = anchor_dtype_name(group['anchor_dtype'])
            for pi, p in enumerate(group['params']):
                if torch.is_complex(p):
                    raise ValueError(f'complex parameters are not supported '
                                     f'({param_label(group, len(self.param_groups) - 1, pi)})')
        except ValueError:
            self.param_groups.pop()
            raise
        if group.get('fused'):
            for device_type, dtype in sorted({(p.device.type, p.dtype) for p in group['params']},
                                             key=str):
                self._fused_available(group, device_type, dtype, tell=True)
        self._update_amp_scaling()
        self._invalidate_levels()

    def _update_amp_scaling(self) -> None:
        """``GradScaler`` hands ``grad_scale`` / ``found_inf`` to ``step()`` (instead of
        skipping it itself) only when every tensor takes the fused path, as in torch."""
        self._step_supports_amp_scaling = bool(self.param_groups) and all(
            group.get('fused') and all(
                fused_kernel(self._fused_kernel_name(group), p.device.type, p.dtype) is not None
                for p in group['params'])
            for group in self.param_groups)

    def _fused_available(self, group: dict[str, Any], device_type: str, dtype: torch.dtype,
                         tell: bool = False) -> bool:
        """Whether torch has a working fused kernel of the group for ``dtype`` tensors on
        ``device_type``; ``tell``: say once per process, optimizer class, device and dtype
        when it has not (then the foreach path runs)."""
        name = self._fused_kernel_name(group)
        if fused_kernel(name, device_type, dtype) is not None:
            return True
        if device_type == 'cpu' and dtype in (torch.float32, torch.float64) \
                and native_kernels() is not None:
            return True  # the native kernels need no torch kernel
        key = (type(self).__name__, device_type, str(dtype))
        if tell and key not in _told_no_fused:
            _told_no_fused.add(key)
            major, minor = torch_version()
            warnings.warn(
                f'{key[0]}(fused=True): torch {major}.{minor} has no working fused {name} '
                f'kernel for {device_type} {key[2][len("torch."):]} tensors (CPU kernels came '
                f'with torch 2.4); using the foreach path, which computes the same step',
                stacklevel=4)
        return False

    def _path(self, group: dict[str, Any], p: Tensor, sparse: bool) -> str:
        """The path of one tensor: ``'loop'``, ``'foreach'`` or ``'fused'``."""
        if sparse:
            return 'loop'
        if group.get('fused'):
            return ('fused' if self._fused_available(group, p.device.type, p.dtype)
                    else 'foreach')
        foreach = group['foreach']
        if foreach is None:
            foreach = p.device.type in FOREACH_DEVICES
        return 'foreach' if foreach else 'loop'

    # ------------------------------------------------------------------ subclass hooks
    def _fused_kernel_name(self, group: dict[str, Any]) -> str:
        """``'sgd'``, ``'adam'`` or ``'adamw'``: the torch fused kernel of the group."""
        raise NotImplementedError

    def _start_group(self, group: dict[str, Any]) -> None:
        """Called once per group and step, grads or not (subclasses: per-group counters)."""

    def _static_key(self, group: dict[str, Any]) -> tuple:
        """Hyper-parameters that must be equal for all tensors of one batch."""
        raise NotImplementedError

    def _new_batch(self, group: dict[str, Any], path: str) -> ReviewBatch:
        raise NotImplementedError

    def _collect(self, batch: Any, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        """Create the base optimizer's state lazily and append the tensor to ``batch``."""
        raise NotImplementedError

    def _update(self, batch: Any, grad_scale: Optional[Tensor],
                found_inf: Optional[Tensor]) -> None:
        """Run the learning step and the review step on ``batch`` with the functional of
        ``batch.path``; ``grad_scale`` / ``found_inf`` only reach the fused path."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        """Perform one optimization step: the base learning step, then the review step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._ensure_levels()
        # 1. validate everything (review weights, gradients, anchors) before changing anything,
        #    so a refused step leaves the optimizer exactly as it was
        scales = [self._review_scale(gi, group) for gi, group in enumerate(self.param_groups)]
        pending: list[tuple[int, Tensor, Tensor, Optional[float], str]] = []
        for gi, group in enumerate(self.param_groups):
            finetune = group['mode'] == 'finetune'
            for pi, (p, level) in enumerate(zip(group['params'], self._levels[gi])):
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse and not self._supports_sparse:
                    raise RuntimeError(
                        f'{type(self).__name__} does not support sparse gradients '
                        f'({param_label(group, gi, pi)}), like torch.optim.'
                        f'{type(self).__name__[len("DualOpt"):]}; use DualOptSGD or a dense '
                        f'embedding (sparse=False)')
                if finetune and level:  # at k = 0 the anchor is never used
                    self._check_anchor_source(p, group, gi, pi)
                pending.append((gi, p, grad, level, self._path(group, p, grad.is_sparse)))
        # 2. an inf/NaN step of GradScaler (fused only): skipped as a whole, before any change
        grad_scale, found_inf = self._amp_tensors(pending)
        if found_inf is not None and found_inf.device.type == 'cpu' and bool(found_inf):
            return loss
        # 3. the learning step then the review step, per batch of tensors that share a path
        #    and hyper-parameters
        for group, (_, base_lr) in zip(self.param_groups, scales):
            if group['base_lr'] is None:
                group['base_lr'] = base_lr
            self._start_group(group)
        batches: dict[tuple, ReviewBatch] = {}
        for gi, p, grad, level, path in pending:
            group = self.param_groups[gi]
            key = (path, grad.is_sparse) + self._static_key(group)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = self._new_batch(group, path)
            state = self.state[p]
            self._collect(batch, p, grad, state, group)
            anchor, weight = None, 0.0
            if level is not None:
                if group['mode'] == 'finetune':
                    anchor = state.get('anchor')
                    if anchor is None:  # lazily, before the first update of the tensor
                        anchor = state['anchor'] = self._new_anchor(p, group)
                weight = scales[gi][0] * level
            batch.anchors.append(anchor)
            batch.review_weights.append(weight)
        for batch in batches.values():
            if batch.path == 'fused':
                self._update(batch, grad_scale, found_inf)
            else:
                self._update(batch, None, None)
        return loss

    def _amp_tensors(self, pending: list[tuple[int, Tensor, Tensor, Optional[float], str]]
                     ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``grad_scale`` / ``found_inf`` as ``GradScaler`` set them on the optimizer for this
        step (``_step_supports_amp_scaling``), ready for the fused kernels.

        A CPU ``found_inf`` is read on the host (no device to wait for): an inf step is then
        skipped as a whole. On an accelerator it stays on the device (no synchronisation) and
        the kernels and the review skip themselves, unless a tensor takes another path or a
        group uses ``reference=True`` (its step counter is per group, on the host): then it is
        read once. Tensors off the fused path get their gradients unscaled here.
        """
        grad_scale = getattr(self, 'grad_scale', None)
        found_inf = getattr(self, 'found_inf', None)
        if grad_scale is None and found_inf is None:
            return None, None
        others = [grad for _, _, grad, _, path in pending if path != 'fused']
        if found_inf is not None and found_inf.device.type != 'cpu' and (
                others or any(g.get('reference') for g in self.param_groups)):
            found_inf = found_inf.to('cpu')
        if found_inf is not None and found_inf.device.type == 'cpu' and bool(found_inf):
            return grad_scale, found_inf
        if grad_scale is not None:
            for grad in others:
                grad.div_(grad_scale.to(grad.device))
        return grad_scale, None if found_inf is None or found_inf.device.type == 'cpu' \
            else found_inf
