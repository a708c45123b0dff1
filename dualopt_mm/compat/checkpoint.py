"""Load mmengine 0.10.x checkpoints under torch >= 2.6 (``weights_only=True`` by default).

mmengine 0.10.7 calls ``torch.load(filename, map_location=...)`` without ``weights_only`` when it
resumes (``resume=True``), loads ``load_from`` and when ``tools/test.py`` reads a checkpoint.
Since torch 2.6 that means ``weights_only=True``, and the restricted unpickler rejects what an
mmengine checkpoint holds besides tensors:

* ``message_hub`` stores :class:`mmengine.logging.HistoryBuffer` objects, whose state holds
  numpy arrays (``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``)
  and, through ``HistoryBuffer.__getstate__``, its statistics methods pickled as
  ``getattr(HistoryBuffer, 'mean')`` (a ``builtins.getattr`` global);
* numpy scalars (``numpy._core.multiarray.scalar``), e.g. the runtime ``eta``.

Choice made here, and its trade-off
-----------------------------------
:func:`enable_mmengine_checkpoint_loading` keeps ``weights_only=True`` and registers exactly these
globals with :func:`torch.serialization.add_safe_globals`. The dangerous one is
``builtins.getattr``: allow-listing the real ``getattr`` would let a crafted checkpoint reach
arbitrary attributes (e.g. ``getattr(getattr, '__self__')`` is the ``builtins`` module) and feed
them to ``HistoryBuffer.__setstate__``, which installs them as class-wide statistics methods that
mmengine calls later. So ``builtins.getattr`` is mapped to :func:`restricted_getattr`, which only
returns the public plain functions of ``HistoryBuffer`` and raises for anything else. What is
allowed is then: numpy arrays/scalars/dtypes, ``HistoryBuffer`` objects and ``HistoryBuffer``'s own
methods — no code a checkpoint author chooses can run.

The other option, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (what mmengine's newer releases
effectively do by passing ``weights_only=False``), turns the protection off for every load in the
process and its children. It is *not* set by our tools. A user who trusts a checkpoint holding
other Python objects (e.g. written by a custom hook) can still set it explicitly; torch's error
message then names the offending global, which can instead be added with ``add_safe_globals``.

Registration is process-wide and idempotent; torch < 2.4 (no ``add_safe_globals``, and
``weights_only=False`` by default before 2.6) needs nothing and is left untouched.
"""
from __future__ import annotations

import inspect
import pickle
from typing import Any, Callable, List, Tuple, Union

import torch

__all__ = [
    'enable_mmengine_checkpoint_loading',
    'mmengine_safe_globals',
    'restricted_getattr',
]

SafeGlobal = Union[Callable[..., Any], Tuple[Callable[..., Any], str]]

_ENABLED = False


def _getattr_allowed_owners() -> Tuple[type, ...]:
    from mmengine.logging import HistoryBuffer
    return (HistoryBuffer,)


def restricted_getattr(obj: Any, name: str, *default: Any) -> Any:
    """``getattr`` as a checkpoint may use it: public functions of ``HistoryBuffer`` only.

    Registered for the ``builtins.getattr`` global of weights-only loads. Anything else raises
    :class:`pickle.UnpicklingError` naming the request.
    """
    if default:
        raise pickle.UnpicklingError('getattr with a default is not allowed in a checkpoint')
    owners = _getattr_allowed_owners()
    if (obj in owners and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(inspect.getattr_static(obj, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); dualopt_mm only allows the public '
        f'methods of {", ".join(o.__qualname__ for o in owners)} (mmengine message hub). If you '
        'trust this file, load it with weights_only=False or add the global with '
        'torch.serialization.add_safe_globals.')


def _numpy_globals() -> List[SafeGlobal]:
    import numpy as np

    try:  # numpy >= 2: numpy._core; the pickles of numpy 1.x name numpy.core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    safe: List[SafeGlobal] = [np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        safe.append((multiarray._reconstruct, f'{module}._reconstruct'))
        safe.append((multiarray.scalar, f'{module}.scalar'))
    # numpy >= 1.25 pickles dtype objects of some types through their DType classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            value = getattr(dtypes, name)
            if isinstance(value, type) and name.endswith('DType'):
                safe.append(value)
    return safe


def mmengine_safe_globals() -> List[SafeGlobal]:
    """The globals an mmengine 0.10.x checkpoint needs, for ``add_safe_globals``/``safe_globals``.

    Usable as ``with torch.serialization.safe_globals(mmengine_safe_globals()): ...`` where a
    process-wide registration is not wanted.
    """
    from mmengine.logging import HistoryBuffer

    safe: List[SafeGlobal] = [HistoryBuffer, (restricted_getattr, 'builtins.getattr')]
    return safe + _numpy_globals()


def enable_mmengine_checkpoint_loading() -> bool:
    """Allow ``torch.load(..., weights_only=True)`` to read mmengine checkpoints.

    Process-wide and idempotent. Call it before a :class:`~mmengine.runner.Runner` resumes or
    loads a checkpoint (``tools/train.py`` and ``tools/test.py`` do). Child processes do not
    inherit it; they run the same tools, which call it again.

    Returns:
        ``True`` if globals were registered (now or earlier), ``False`` when this torch has no
        ``weights_only`` allow-list (nothing to do).
    """
    global _ENABLED
    if _ENABLED:
        return True
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:  # torch < 2.4: weights_only is not the default there
        return False
    add_safe_globals(mmengine_safe_globals())
    _ENABLED = True
    return True
