"""Read mmengine 0.10 checkpoints safely on every torch: ``weights_only=True`` not widened.

mmengine 0.10.7 calls ``torch.load(filename, map_location=...)`` without ``weights_only`` when it
resumes, loads ``load_from`` or an ``init_cfg=Pretrained`` file, and when ``tools/test.py``
reads a checkpoint. Since torch 2.6 that means ``weights_only=True``, and torch's restricted
unpickler refuses what a checkpoint holds besides tensors: the message hub's
:class:`mmengine.logging.HistoryBuffer` objects (numpy arrays inside, and their statistics methods
pickled as ``getattr(HistoryBuffer, 'mean')``) and numpy scalars.

Allowing numpy's own reconstructors (``numpy.dtype``, ``_reconstruct``, ``scalar``), the real
``HistoryBuffer`` and ``getattr`` is unsafe: a crafted file then builds void / object dtypes
with forged pointers (the process crashes when the array is read or freed), scalars that read
past their buffer, or rebinds ``HistoryBuffer``'s class-wide statistics table. So nothing of
numpy or mmengine runs on checkpoint data here. Instead, under the *names* a checkpoint uses,
:func:`decoder_globals` offers small decoder classes that accept one grammar only:

==============================================  ==============================================
global in the pickle                            what the decoder accepts
==============================================  ==============================================
``numpy.dtype``                                 a numeric dtype (bool, int/uint 8-64, float
                                                16-64, complex 64/128) and its plain state
``numpy.ndarray`` + ``numpy[._]core.multiarray  a C/F-ordered array of such a dtype whose
._reconstruct``                                 byte string has exactly shape x itemsize bytes
``numpy[._]core.multiarray.scalar``             a scalar of such a dtype, exactly itemsize bytes
``mmengine.logging.history_buffer.HistoryBuffer``  ``max_length`` (int) and two 1-D histories of
                                                equal length; statistics methods by name
``builtins.getattr``                            ``getattr(HistoryBuffer, 'min'|'max'|'current'|
                                                'mean')`` only, returning the *name*
==============================================  ==============================================

After the unpickler finishes, :func:`materialize` turns the decoded values into real numpy
arrays and scalars (``numpy.frombuffer`` on validated bytes) and real ``HistoryBuffer`` objects
(built through their constructor; the class table is never touched). These are exactly the
globals that real checkpoints of mmdet, mmseg and mmpretrain runs contain (plain, EMA, DDP,
``save_optimizer``; the test suite inspects them).

The decoders are allowed only *around* mmengine's own loads: :func:`install` wraps the loader
functions of :class:`mmengine.runner.CheckpointLoader` (resume, ``load_from``, ``Pretrained``)
so that each load runs inside ``torch.serialization.safe_globals(decoder_globals())`` and is
materialised. ``import dualopt_mm`` calls it, so upstream train scripts (``mim train mmdet``,
mmdet's / mmseg's ``tools/train.py`` with ``custom_imports``) resume too. Torch's process-wide
safe list is never changed, and a plain ``torch.load(..., weights_only=True)`` elsewhere accepts
exactly what it accepts without this package. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (torch's
own switch) disables the protection entirely; nothing here sets it.

Per torch version (:func:`mmengine_checkpoint_globals`): >= 2.6 as above; 2.5 the same, with
``weights_only=True`` given to mmengine's loads (torch's default there is ``False``); 2.0-2.4
have no scoped allowlist, so mmengine's loads read through
:class:`~dualopt_mm.compat.restricted_unpickler.RestrictedPickleModule` (torch's own
``weights_only`` list plus these decoders) instead of torch's unrestricted default.
"""
from __future__ import annotations

import contextlib
import functools
import math
import pickle
import threading
from collections.abc import Iterator
from typing import Any, Callable

import torch

from .restricted_unpickler import RestrictedPickleModule, default_load_kwargs
from .torch_features import has_safe_globals, weights_only_by_default

__all__ = [
    'decoder_globals',
    'enable_mmengine_checkpoint_loading',
    'install',
    'is_installed',
    'load_mmengine_checkpoint',
    'materialize',
    'mmengine_checkpoint_globals',
]

#: numpy dtype codes a checkpoint may use (``np.dtype(code)``): bool, ints, floats, complex.
NUMERIC_DTYPES = ('b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8',
                  'f2', 'f4', 'f8', 'c8', 'c16')
#: ``HistoryBuffer`` methods a checkpoint names as ``getattr(HistoryBuffer, name)``.
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
_BYTE_ORDERS = ('<', '>', '|', '=')
_NUMPY_CORE_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray')


def _refuse(message: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(
        f'{message}. dualopt_mm reads only what mmengine 0.10 checkpoints contain (numeric numpy '
        f'arrays and scalars, HistoryBuffer); load a file you trust with weights_only=False.')


class _Decoded:
    """A value decoded from a checkpoint; :func:`materialize` replaces it by :meth:`value`."""

    __slots__ = ()

    def value(self) -> Any:
        raise NotImplementedError


class _DTypeSpec(_Decoded):
    """Stands for ``numpy.dtype(code, align, copy)`` plus its pickled state."""

    __slots__ = ('code', 'byte_order')

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True) -> None:
        if code not in NUMERIC_DTYPES:
            raise _refuse(f'checkpoint asks for numpy dtype {code!r}; allowed are '
                          f'{", ".join(NUMERIC_DTYPES)}')
        if align is not False or not isinstance(copy, bool):
            raise _refuse(f'checkpoint asks for numpy dtype {code!r} with align={align!r}, '
                          f'copy={copy!r}')
        self.code = code
        self.byte_order = '='

    def __setstate__(self, state: Any) -> None:
        code = getattr(self, 'code', None)
        if code not in NUMERIC_DTYPES:
            raise _refuse('checkpoint sets the state of an uninitialised numpy dtype')
        if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
                or state[1] not in _BYTE_ORDERS or state[2:] != (None, None, None, -1, -1, 0)):
            raise _refuse(f'checkpoint gives numpy dtype {code!r} the state {state!r}; only a '
                          f'byte order is allowed')
        self.byte_order = state[1]

    def dtype(self) -> Any:
        import numpy as np

        code = getattr(self, 'code', None)
        if code not in NUMERIC_DTYPES:
            raise _refuse('checkpoint uses an uninitialised numpy dtype')
        order = self.byte_order if code not in ('b1', 'i1', 'u1') else '|'
        return np.dtype(order + code if order != '|' else code)

    def value(self) -> Any:
        return self.dtype()


class _NDArrayMarker:
    """Stands for the class ``numpy.ndarray``; only ever passed to :class:`_ArraySpec`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _refuse('checkpoint tries to instantiate numpy.ndarray directly')


class _ArraySpec(_Decoded):
    """Stands for ``numpy._core.multiarray._reconstruct(ndarray, (0,), b'b')`` and the array's
    pickled state ``(1, shape, dtype, is_fortran, raw_bytes)``."""

    __slots__ = ('array',)

    def __init__(self, subtype: Any = None, shape: Any = None, typecode: Any = None) -> None:
        if subtype is not _NDArrayMarker or shape != (0,) or typecode != b'b':
            raise _refuse(f'checkpoint reconstructs an array as ({subtype!r}, {shape!r}, '
                          f'{typecode!r}); only plain numpy.ndarray is allowed')
        self.array = None

    def __setstate__(self, state: Any) -> None:
        import numpy as np

        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _refuse('checkpoint gives a numpy array a malformed state')
        _, shape, dtype_spec, is_fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise _refuse(f'checkpoint gives a numpy array the shape {shape!r}')
        if type(dtype_spec) is not _DTypeSpec or not isinstance(is_fortran, bool):
            raise _refuse('checkpoint gives a numpy array a dtype that is not a numeric dtype')
        if type(raw) is not bytes:
            raise _refuse(f'checkpoint gives a numpy array data of type {type(raw).__name__}; '
                          f'only bytes are allowed')
        dtype = dtype_spec.dtype()
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise _refuse(f'checkpoint gives a numpy array of shape {shape} and dtype {dtype} '
                          f'{len(raw)} bytes instead of {math.prod(shape) * dtype.itemsize}')
        flat = np.frombuffer(raw, dtype=dtype)
        self.array = flat.reshape(shape, order='F' if is_fortran else 'C').copy(
            order='F' if is_fortran else 'C')

    def value(self) -> Any:
        if getattr(self, 'array', None) is None:
            raise _refuse('checkpoint holds a numpy array without data')
        return self.array


def _scalar(dtype_spec: Any, raw: Any) -> Any:
    """Stands for ``numpy._core.multiarray.scalar(dtype, raw_bytes)``: a real numpy scalar."""
    import numpy as np

    if type(dtype_spec) is not _DTypeSpec or type(raw) is not bytes:
        raise _refuse('checkpoint builds a numpy scalar from something other than a numeric '
                      'dtype and bytes')
    dtype = dtype_spec.dtype()
    if len(raw) != dtype.itemsize:
        raise _refuse(f'checkpoint gives a numpy {dtype} scalar {len(raw)} bytes instead of '
                      f'{dtype.itemsize}')
    return np.frombuffer(raw, dtype=dtype)[0].copy()


class _StatisticsMethod(_Decoded):
    """Stands for ``getattr(HistoryBuffer, name)``: a method *name*, never the function."""

    __slots__ = ('name',)

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self) -> Any:
        return self.name


def _getattr(owner: Any, name: Any, *default: Any) -> _StatisticsMethod:
    """Stands for ``builtins.getattr``: only ``getattr(HistoryBuffer, <statistics method>)``."""
    if default or owner is not _HistoryBufferSpec or name not in HISTORY_BUFFER_METHODS:
        raise _refuse(f'checkpoint asks for getattr({owner!r}, {name!r}); only '
                      f'getattr(HistoryBuffer, m) for m in {HISTORY_BUFFER_METHODS} is allowed')
    return _StatisticsMethod(name)


class _HistoryBufferSpec(_Decoded):
    """Stands for an :class:`mmengine.logging.HistoryBuffer` (``NEWOBJ`` + state dict)."""

    __slots__ = ('state',)

    _KEYS = frozenset(('max_length', '_log_history', '_count_history', 'statistics_methods'))

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= self._KEYS:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise _refuse(f'checkpoint gives a HistoryBuffer the state {keys}')
        max_length = state.get('max_length', 1000000)
        if type(max_length) is not int or max_length < 1:
            raise _refuse(f'checkpoint gives a HistoryBuffer max_length={max_length!r}')
        for key in ('_log_history', '_count_history'):
            if type(state.get(key)) is not _ArraySpec or state[key].value().ndim != 1:
                raise _refuse(f'checkpoint gives a HistoryBuffer a {key} that is not a 1-D '
                              f'numeric array')
        if len(state['_log_history'].value()) != len(state['_count_history'].value()):
            raise _refuse('checkpoint gives a HistoryBuffer histories of different lengths')
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or not all(
                type(m) is _StatisticsMethod and m.name == k for k, m in methods.items()):
            raise _refuse('checkpoint gives a HistoryBuffer statistics methods other than '
                          f'{HISTORY_BUFFER_METHODS}')
        self.state = state

    def value(self) -> Any:
        from mmengine.logging import HistoryBuffer

        state = getattr(self, 'state', None)
        if state is None:
            raise _refuse('checkpoint holds a HistoryBuffer without state')
        # the constructor: instance attributes only, HistoryBuffer's class table is untouched
        return HistoryBuffer(state['_log_history'].value(), state['_count_history'].value(),
                             state.get('max_length', 1000000))


def decoder_globals() -> list[tuple[Callable[..., Any], str]]:
    """``(decoder, 'module.name')`` pairs for ``torch.serialization.safe_globals``.

    A load under these globals returns decoded placeholders: pass its result to
    :func:`materialize` (or use :func:`load_mmengine_checkpoint`, which does both).
    """
    pairs: list[tuple[Callable[..., Any], str]] = [
        (_DTypeSpec, 'numpy.dtype'),
        (_NDArrayMarker, 'numpy.ndarray'),
        (_HistoryBufferSpec, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_getattr, 'builtins.getattr'),
    ]
    for module in _NUMPY_CORE_MODULES:
        pairs.append((_ArraySpec, f'{module}._reconstruct'))
        pairs.append((_scalar, f'{module}.scalar'))
    return pairs


def materialize(obj: Any) -> Any:
    """Replace the decoded placeholders inside a loaded checkpoint by real objects.

    Walks dicts (``OrderedDict`` and mmengine's dict subclasses are kept), lists, tuples and
    sets; anything else (tensors, numbers, strings, objects a full unpickler made) is returned
    unchanged. Shared references stay shared.
    """
    memo: dict[int, Any] = {}

    def walk(value: Any) -> Any:
        key = id(value)
        if key in memo:
            return memo[key]
        if isinstance(value, _Decoded):
            result = value.value()
        elif isinstance(value, dict):
            memo[key] = value
            for k in list(value):
                value[k] = walk(value[k])
            result = value
        elif type(value) is list:
            memo[key] = value
            value[:] = [walk(v) for v in value]
            result = value
        elif type(value) is tuple:
            result = tuple(walk(v) for v in value)
        elif type(value) in (set, frozenset):
            result = type(value)(walk(v) for v in value)
        else:
            return value
        memo[key] = result
        return result

    return walk(obj)


_LOAD_LOCK = threading.RLock()


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Read checkpoints through the decoders for the duration of the block.

    torch >= 2.6: torch's ``safe_globals`` context around ``weights_only=True`` (its default).
    torch 2.5: the same, and a ``torch.load`` call in the block that names neither
    ``weights_only`` nor ``pickle_module`` (mmengine's) gets ``weights_only=True``. torch < 2.5
    (no scoped allowlist): such a call reads through
    :class:`~dualopt_mm.compat.restricted_unpickler.RestrictedPickleModule` (torch's own list
    plus the decoders) instead of the unrestricted default. Nested and concurrent uses are
    serialised; afterwards torch's safe list and ``torch.load`` are what they were before.
    """
    with _LOAD_LOCK:
        if weights_only_by_default():
            with torch.serialization.safe_globals(decoder_globals()):
                yield
            return
        if has_safe_globals():
            with torch.serialization.safe_globals(decoder_globals()), \
                    default_load_kwargs(weights_only=True):
                yield
            return
        with default_load_kwargs(weights_only=False,
                                  pickle_module=RestrictedPickleModule(decoder_globals())):
            yield


def load_mmengine_checkpoint(f: Any, map_location: Any = None) -> Any:
    """``torch.load(f, map_location, weights_only=True)`` for mmengine 0.10 checkpoints (on
    torch < 2.5: through the allowlist unpickler, see :func:`mmengine_checkpoint_globals`).

    Returns the checkpoint with real numpy arrays and ``HistoryBuffer`` objects; anything
    outside the grammar of the module docstring raises :class:`pickle.UnpicklingError`.
    """
    with mmengine_checkpoint_globals():
        if has_safe_globals():
            checkpoint = torch.load(f, map_location=map_location, weights_only=True)
        else:
            checkpoint = torch.load(f, map_location=map_location)  # restricted by the block
    return materialize(checkpoint)


def _decoding(loader: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one of mmengine's ``CheckpointLoader`` loader functions."""
    if getattr(loader, '__dualopt_decoding__', False):
        return loader

    @functools.wraps(loader)
    def load(*args: Any, **kwargs: Any) -> Any:
        with mmengine_checkpoint_globals():
            checkpoint = loader(*args, **kwargs)
        return materialize(checkpoint)

    load.__dualopt_decoding__ = True  # type: ignore[attr-defined]
    return load


def is_installed() -> bool:
    """Whether every ``CheckpointLoader`` scheme of mmengine reads through the decoders."""
    from mmengine.runner.checkpoint import CheckpointLoader

    return all(getattr(loader, '__dualopt_decoding__', False)
               for loader in CheckpointLoader._schemes.values())


def install() -> bool:
    """Make mmengine's checkpoint loading (resume, ``load_from``, ``Pretrained``) read mmengine
    0.10 checkpoints through the decoders: under torch's ``weights_only=True`` where torch can
    scope an allowlist (>= 2.5), through the allowlist unpickler before that.

    Idempotent. Changes nothing in torch's safe list; schemes registered later by other
    packages are wrapped at the next call. Returns ``True``.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    schemes: dict[str, Callable[..., Any]] = CheckpointLoader._schemes
    for prefix, loader in list(schemes.items()):
        schemes[prefix] = _decoding(loader)
    return True


def enable_mmengine_checkpoint_loading() -> bool:
    """Alias of :func:`install` (the name of earlier releases)."""
    return install()

