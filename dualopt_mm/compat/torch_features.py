"""What the installed torch can do, probed once: the one place the package handles torch drift.

The package supports torch 2.0 through the newest release. Each flag below is a feature test
(a tiny call, or the presence of a function), not a version comparison, so a backport or a
build without a feature is seen as it is. Everything else asks here instead of branching on
``torch.__version__``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Optional

import torch

__all__ = [
    'foreach_lerp_takes_scalar_list',
    'fused_kernel',
    'grad_scaler',
    'has_safe_globals',
    'torch_version',
    'weights_only_by_default',
]


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch, for messages and skip reasons only."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(minor)


@functools.cache
def foreach_lerp_takes_scalar_list() -> bool:
    """Whether ``torch._foreach_lerp_(tensors, ends, [w0, w1, ...])`` exists (a weight per
    tensor); torch 2.0 / 2.1 have only the one-scalar and the tensor-list forms."""
    t = torch.zeros(1)
    try:
        torch._foreach_lerp_([t], [torch.ones(1)], [0.5])
    except (TypeError, RuntimeError):
        return False
    return bool(t.item() == 0.5)


#: torch's fused optimizer kernels by DualOpt base optimizer
_FUSED_KERNELS = {'sgd': '_fused_sgd_', 'adam': '_fused_adam_', 'adamw': '_fused_adamw_'}


@functools.cache
def fused_kernel(name: str, device_type: str, dtype: torch.dtype = torch.float32
                 ) -> Optional[Callable[..., None]]:
    """torch's fused kernel of ``name`` (``'sgd'``, ``'adam'``, ``'adamw'``) if it computes
    a correct step for ``dtype`` tensors on ``device_type``, else ``None``.

    Probed by one step on 64 elements (past the kernels' vector width) checked against the
    formula: CPU kernels came in torch 2.4, ``_fused_sgd_`` in 2.2 on CUDA, and torch 2.13's
    CPU ``_fused_sgd_`` leaves 16-bit tensors of 32 elements or more unchanged; a device
    torch cannot reach is ``None`` too.
    """
    kernel = getattr(torch, _FUSED_KERNELS[name], None)
    if kernel is None:
        return None
    try:
        device = torch.device(device_type)
        p = torch.linspace(-2, 2, 64, dtype=dtype, device=device)
        g = torch.linspace(1, -1, 64, dtype=dtype, device=device)
        start = p.to(torch.float64, copy=True)
        if name == 'sgd':
            kernel([p], [g], [], weight_decay=0.0, momentum=0.0, lr=0.5, dampening=0.0,
                   nesterov=False, maximize=False, is_first_step=False)
            expected = start - 0.5 * g.double()
        else:  # step 1: the bias-corrected moments are g and g^2
            kernel([p], [g], [torch.zeros_like(p)], [torch.zeros_like(p)], [],
                   [torch.ones((), device=device)], lr=0.5, beta1=0.9, beta2=0.999,
                   weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
            g64 = g.double()
            expected = start - 0.5 * g64 / (g64.abs() + 1e-8)
        error = float((p.double() - expected).abs().max())
    except (RuntimeError, TypeError, NotImplementedError, AssertionError):  # no such device
        return None
    return kernel if error <= 8 * torch.finfo(dtype).eps else None


@functools.cache
def has_safe_globals() -> bool:
    """Whether ``torch.serialization.safe_globals`` (the scoped allowlist of torch's
    ``weights_only`` unpickler) exists: torch >= 2.5."""
    return callable(getattr(torch.serialization, 'safe_globals', None))


@functools.cache
def weights_only_by_default() -> bool:
    """Whether ``torch.load`` defaults to ``weights_only=True`` (torch >= 2.6)."""
    import inspect

    default = inspect.signature(torch.load).parameters['weights_only'].default
    if default is None:  # torch >= 2.6 resolves None to True unless an env switch says no
        return True
    return bool(default)


def grad_scaler(device: str = 'cpu', **kwargs):  # type: ignore[no-untyped-def]
    """``torch.amp.GradScaler(device, ...)`` where it exists (torch >= 2.3), else torch's
    older CUDA-only ``torch.cuda.amp.GradScaler`` (which needs CUDA to scale)."""
    scaler = getattr(torch.amp, 'GradScaler', None)
    if scaler is not None:
        return scaler(device, **kwargs)
    return torch.cuda.amp.GradScaler(**kwargs)
