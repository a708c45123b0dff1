"""Make mmengine 0.10.7's ``FSDPStrategy`` (``FlexibleRunner``) save and resume on current torch,
and run on CPU-only machines.

1. Resume: ``FSDPStrategy.load_optim_state_dict`` calls
   ``FSDP.optim_state_dict_to_load(state_dict, model, optimizer)``, the argument order of
   torch 2.0; since torch 2.1 it is ``(model, optim, optim_state_dict)``, so every resume of an
   FSDP run fails (``TypeError: unhashable type: 'dict'``). Patched to pass keywords, only when
   the installed torch has the new order (a signature probe, not a version test).
2. CPU, no CUDA: the strategy passes ``device_id=int(LOCAL_RANK)`` to FSDP, which then wants
   that CUDA device (patched: ``torch.device('cpu')``); and ``state_dict_cfg='full'`` asks for
   ``offload_to_cpu=True``, which on CPU tensors frees the gathered weights before they are
   cloned: ``FSDP.state_dict`` / ``FSDP.optim_state_dict`` segfault when a checkpoint is saved,
   with any optimizer (patched: ``offload_to_cpu`` off, the tensors are on the CPU already).

:func:`patch_mmengine_fsdp_strategy` is idempotent; :func:`dualopt_mm.compat.apply_all` and the
package's tools apply it.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

__all__ = ['patch_mmengine_fsdp_strategy']

_PATCHED_FLAG = '_dualopt_fsdp_patched'


def _flagged(fn: Any) -> Any:
    setattr(fn, _PATCHED_FLAG, True)
    return fn


def _patch_resume(strategy_cls: type) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    if getattr(strategy_cls.load_optim_state_dict, _PATCHED_FLAG, False):
        return
    first = next(iter(inspect.signature(FSDP.optim_state_dict_to_load).parameters))
    if first != 'model':  # torch 2.0: mmengine's call is right
        return

    def load_optim_state_dict(self: Any, state_dict: dict) -> None:
        optim_state_dict = FSDP.optim_state_dict_to_load(
            model=self.model, optim=self.optim_wrapper.optimizer, optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)

    load_optim_state_dict.__doc__ = strategy_cls.load_optim_state_dict.__doc__
    strategy_cls.load_optim_state_dict = _flagged(load_optim_state_dict)


def _patch_cpu(strategy_cls: type, wrapper_cls: type) -> None:
    wrapper_init = wrapper_cls.__init__
    if not getattr(wrapper_init, _PATCHED_FLAG, False):
        @functools.wraps(wrapper_init)
        def __init__(self: Any, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
            if isinstance(kwargs.get('device_id'), int):
                kwargs['device_id'] = torch.device('cpu')
            wrapper_init(self, module, *args, **kwargs)

        wrapper_cls.__init__ = _flagged(__init__)
    init_cfg = strategy_cls._init_state_dict_cfg
    if not getattr(init_cfg, _PATCHED_FLAG, False):
        @functools.wraps(init_cfg)
        def _init_state_dict_cfg(self: Any, state_dict_cfg: Any) -> None:
            init_cfg(self, state_dict_cfg)
            for config in (self.state_dict_config, self.optim_state_dict_config):
                if getattr(config, 'offload_to_cpu', False):
                    config.offload_to_cpu = False

        strategy_cls._init_state_dict_cfg = _flagged(_init_state_dict_cfg)


def patch_mmengine_fsdp_strategy() -> bool:
    """Apply the fixes of the module docstring; False when mmengine or torch has no FSDP."""
    try:
        from mmengine._strategy.fsdp import FSDPStrategy
        from mmengine.model.wrappers import MMFullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed FSDP
        return False
    _patch_resume(FSDPStrategy)
    if not torch.cuda.is_available():
        _patch_cpu(FSDPStrategy, MMFullyShardedDataParallel)
    return True
