"""What the installed torch can do, probed once: the one place the package handles torch drift.

The package supports torch 2.0 through the newest release. Each flag below is a feature test
(a tiny call, or the presence of a function), not a version comparison, so a backport or a
build without a feature is seen as it is. Everything else asks here instead of branching on
``torch.__version__``.
"""
from __future__ import annotations

import functools

import torch

__all__ = [
    'foreach_lerp_takes_scalar_list',
    'grad_scaler',
    'has_safe_globals',
    'torch_version',
    'weights_only_by_default',
]


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch, for messages and skip reasons only."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(minor)


@functools.lru_cache(maxsize=None)
def foreach_lerp_takes_scalar_list() -> bool:
    """Whether ``torch._foreach_lerp_(tensors, ends, [w0, w1, ...])`` exists (a weight per
    tensor); torch 2.0 / 2.1 have only the one-scalar and the tensor-list forms."""
    t = torch.zeros(1)
    try:
        torch._foreach_lerp_([t], [torch.ones(1)], [0.5])
    except (TypeError, RuntimeError):
        return False
    return bool(t.item() == 0.5)


@functools.lru_cache(maxsize=None)
def has_safe_globals() -> bool:
    """Whether ``torch.serialization.safe_globals`` (the scoped allowlist of torch's
    ``weights_only`` unpickler) exists: torch >= 2.5."""
    return callable(getattr(torch.serialization, 'safe_globals', None))


@functools.lru_cache(maxsize=None)
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
