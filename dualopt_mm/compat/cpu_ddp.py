"""Make mmengine 0.10.x distributed training run on CPU-only machines (gloo backend).

Launching ``torchrun --nproc_per_node=N tools/train.py CFG --launcher pytorch`` without CUDA
fails in three places of mmengine 0.10.7:

1. ``mmengine.dist.utils._init_dist_pytorch`` (and the slurm / mpi variants) call
   ``torch.cuda.set_device(local_rank)`` unconditionally -> "Torch not compiled with CUDA".
2. The stock configs ask for ``env_cfg.dist_cfg.backend='nccl'``, which needs GPUs.
3. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to ``MMDistributedDataParallel``;
   torch's DDP refuses ``device_ids`` for a CPU module.

:func:`patch_mmengine_for_cpu_ddp` fixes them, only when CUDA is unavailable: ``set_device``
becomes a no-op, ``'nccl'`` is replaced by ``'gloo'`` (with a warning) when the process group is
initialised, and ``device_ids`` / ``output_device`` are dropped in
``MMDistributedDataParallel.__init__``. It also reverts ``SyncBatchNorm`` layers (e.g. of stock
MMSegmentation configs) to ``BatchNorm`` there, as mmengine itself does for non-distributed
runs: torch's SyncBN has no CPU implementation. Note that BN statistics are then per process.

mmengine's ``FSDPStrategy`` (``FlexibleRunner``) is fixed in :mod:`.fsdp_strategy`.

The patch is idempotent and a no-op on machines with CUDA.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch

__all__ = ['patch_mmengine_for_cpu_ddp', 'is_cpu_ddp_patched']

_PATCHED_FLAG = '_dualopt_cpu_ddp_patched'
_patched = False


def is_cpu_ddp_patched() -> bool:
    """Whether :func:`patch_mmengine_for_cpu_ddp` has changed mmengine in this process."""
    return _patched


def _warn(message: str) -> None:
    try:
        from mmengine.logging import print_log
        print_log(message, logger='current', level=logging.WARNING)
    except ImportError:  # pragma: no cover - mmengine is a dependency of the caller
        logging.getLogger(__name__).warning(message)


def _cuda_set_device_noop(device: Any) -> None:
    """Replacement of ``torch.cuda.set_device`` without CUDA: there is no device to select."""


def _with_gloo_backend(init_fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap mmengine's ``_init_dist_*`` so that the ``'nccl'`` backend becomes ``'gloo'``."""

    @functools.wraps(init_fn)
    def wrapper(backend: str = 'nccl', *args: Any, **kwargs: Any) -> None:
        if backend == 'nccl':
            _warn('dualopt_mm: CUDA is not available; using the "gloo" backend instead of '
                  '"nccl" for distributed training on CPU.')
            backend = 'gloo'
        init_fn(backend, *args, **kwargs)

    setattr(wrapper, _PATCHED_FLAG, True)
    return wrapper


def _patch_ddp_init(ddp_class: type) -> None:
    original_init = ddp_class.__init__
    if getattr(original_init, _PATCHED_FLAG, False):
        return

    @functools.wraps(original_init)
    def __init__(self: Any, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        dropped = [key for key in ('device_ids', 'output_device')
                   if kwargs.pop(key, None) is not None]
        if dropped:
            _warn(f'dualopt_mm: CUDA is not available; dropped {"/".join(dropped)} from '
                  f'{type(self).__name__} (CPU module).')
        # torch.nn.SyncBatchNorm and mmcv's SyncBatchNorm share the class name.
        if any(type(m).__name__ == 'SyncBatchNorm' for m in module.modules()):
            from mmengine.model import revert_sync_batchnorm
            _warn('dualopt_mm: SyncBatchNorm has no CPU implementation; reverted to '
                  'BatchNorm (statistics are per process).')
            module = revert_sync_batchnorm(module)
        original_init(self, module, *args, **kwargs)

    setattr(__init__, _PATCHED_FLAG, True)
    ddp_class.__init__ = __init__


def patch_mmengine_for_cpu_ddp() -> bool:
    """Apply the CPU distributed-training fixes described in the module docstring.

    Returns:
        ``True`` if the patch is (now or already) applied, ``False`` when CUDA is available
        and nothing was changed.
    """
    global _patched
    if _patched:
        return True
    if torch.cuda.is_available():
        return False

    import mmengine.dist.utils as dist_utils
    from mmengine.model import MMDistributedDataParallel

    if not getattr(torch.cuda.set_device, _PATCHED_FLAG, False):
        setattr(_cuda_set_device_noop, _PATCHED_FLAG, True)
        torch.cuda.set_device = _cuda_set_device_noop
    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        init_fn = getattr(dist_utils, name, None)
        if init_fn is not None and not getattr(init_fn, _PATCHED_FLAG, False):
            setattr(dist_utils, name, _with_gloo_backend(init_fn))
    _patch_ddp_init(MMDistributedDataParallel)
    _patched = True
    return True
