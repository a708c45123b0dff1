"""Make mmengine 0.10.7's ``DeepSpeedStrategy`` resume ZeRO runs, build more than once per
process, and say clearly what DeepSpeed version it needs.

Resume: ``DeepSpeedStrategy.resume`` lets DeepSpeed load the checkpoint folder with the
optimizer states (for ZeRO, every rank reads its own ``zero_pp_rank_*`` file), then loads the
``optim_wrapper`` entry of the client state, rank 0's ``state_dict()``, into the ZeRO
optimizer again; DeepSpeed's ``load_state_dict`` takes a list of every rank's states and
fails (``KeyError: 1``), with any optimizer. Under ZeRO the patch skips that second load:
the states are in place already.

``DeepSpeedStrategy.__init__`` calls ``register_deepspeed_optimizers()``, which registers
DeepSpeed's optimizers in mmengine's ``OPTIMIZERS`` without ``force``: a second strategy in the
same process (a second run, a test after training, a test suite) fails with ``KeyError:
'DeepSpeedCPUAdam is already registered'``. The patch registers each name once. It also
imports ``deepspeed.runtime.fp16.onebit``, removed in deepspeed 0.19.7: with a newer
deepspeed the patch raises an ImportError naming the version that works (0.19.6, the
``deepspeed`` extra of this package) instead of mmengine's bare ``ModuleNotFoundError``.

:func:`patch_mmengine_deepspeed_strategy` is idempotent and does nothing without deepspeed;
:func:`dualopt_mm.compat.apply_all` applies it.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any

__all__ = ['DEEPSPEED_VERSION', 'patch_mmengine_deepspeed_strategy']

#: The deepspeed release verified with mmengine 0.10.7 (and pinned by the ``deepspeed`` extra).
DEEPSPEED_VERSION = '0.19.6'

_PATCHED_FLAG = '_dualopt_deepspeed_patched'


def _register_deepspeed_optimizers() -> list[str]:
    """mmengine's ``register_deepspeed_optimizers``, each name registered once."""
    from mmengine.registry import OPTIMIZERS
    try:
        import deepspeed
    except ImportError:
        return []
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.lamb import FusedLamb
    try:
        from deepspeed.runtime.fp16.onebit import OnebitAdam, OnebitLamb, ZeroOneAdam
    except ImportError as error:
        raise ImportError(
            f'mmengine 0.10.7 DeepSpeedStrategy needs deepspeed.runtime.fp16.onebit, which '
            f'deepspeed {deepspeed.__version__} no longer has (removed in 0.19.7): install '
            f"deepspeed=={DEEPSPEED_VERSION} (pip install 'dualopt_mm[deepspeed]')") from error
    names = []
    for cls in (DeepSpeedCPUAdam, FusedAdam, FusedLamb, OnebitAdam, OnebitLamb, ZeroOneAdam):
        if OPTIMIZERS.get(cls.__name__) is None:
            OPTIMIZERS.register_module(module=cls)
        names.append(cls.__name__)
    return names


def _patch_resume(strategy_cls: type) -> None:
    load = strategy_cls.load_optim_state_dict
    if getattr(load, _PATCHED_FLAG, False):
        return

    @functools.wraps(load)
    def load_optim_state_dict(self: Any, state_dict: dict) -> None:
        if self.model.zero_optimization():  # DeepSpeed loaded every rank's own states
            return
        load(self, state_dict)

    setattr(load_optim_state_dict, _PATCHED_FLAG, True)
    strategy_cls.load_optim_state_dict = load_optim_state_dict


def patch_mmengine_deepspeed_strategy() -> bool:
    """Apply the fixes of the module docstring; False when deepspeed is not installed."""
    if importlib.util.find_spec('deepspeed') is None:
        return False
    import mmengine._strategy.deepspeed as strategy_module
    if not getattr(strategy_module.register_deepspeed_optimizers, _PATCHED_FLAG, False):
        setattr(_register_deepspeed_optimizers, _PATCHED_FLAG, True)
        strategy_module.register_deepspeed_optimizers = _register_deepspeed_optimizers
    _patch_resume(strategy_module.DeepSpeedStrategy)
    return True
