"""An allowlist unpickler for torch versions whose ``torch.load`` cannot scope one (< 2.5).

torch >= 2.5 lets a caller allow extra globals for one load
(``torch.serialization.safe_globals``); :mod:`dualopt_mm.compat.checkpoint` uses that. Older
torch (2.0-2.4) has a ``weights_only=True`` unpickler with a fixed list: it refuses every
mmengine checkpoint (numpy arrays, ``HistoryBuffer``), and its default, ``weights_only=False``,
runs any code a crafted file names. For those versions this module gives ``torch.load`` a
``pickle_module`` whose ``Unpickler`` resolves only

* what torch's own ``weights_only`` unpickler allows: ``collections.OrderedDict`` / ``Counter``,
  ``set``, ``bytearray``, ``complex``, ``torch.device``, ``torch.Size``,
  ``torch.Tensor`` / ``Parameter`` and the tensor and storage classes, torch's dtypes, the
  ``torch._utils._rebuild_*`` tensor constructors, ``torch._tensor._rebuild_from_type_v2``,
  ``torch.serialization._get_layout``, and ``_codecs.encode`` (bytes in pickle protocol 2);
* the decoders of :func:`dualopt_mm.compat.checkpoint.decoder_globals`, under the names a
  checkpoint uses (numeric numpy arrays and scalars, ``HistoryBuffer``, ``getattr`` of its
  statistics methods).

Any other global (``os.system``, ``builtins.eval``, numpy's own reconstructors, ...) is refused
with :class:`pickle.UnpicklingError` naming it, before anything runs: the "restricting globals"
pattern of the Python docs, applied to every ``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / ``EXT``
opcode through ``find_class``. torch resolves storage types itself, before ``find_class``.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import functools
import pickle
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any, Callable

import torch

__all__ = ['RestrictedPickleModule', 'default_load_kwargs', 'torch_weights_only_globals']

_REBUILD_FUNCTIONS = ('_rebuild_parameter', '_rebuild_parameter_with_state', '_rebuild_tensor',
                      '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_sparse_tensor',
                      '_rebuild_meta_tensor_no_storage', '_rebuild_wrapper_subclass')


def torch_weights_only_globals() -> dict[str, Any]:
    """``'module.name' -> object`` for what torch's ``weights_only`` unpickler allows (read
    off torch 2.13's ``_get_allowed_globals``, a superset of 2.0's; written out here, not
    imported, since that function is private)."""
    allowed: dict[str, Any] = {
        'collections.OrderedDict': OrderedDict,
        'collections.Counter': Counter,  # mmdet's checkpoints hold one (dataset statistics)
        'torch.device': torch.device,
        'builtins.bytearray': bytearray,
        'builtins.set': set,
        'builtins.complex': complex,
        'torch.nn.parameter.Parameter': torch.nn.Parameter,
        'torch.Size': torch.Size,
        'torch.Tensor': torch.Tensor,
        # how pickle protocol 2 writes bytes (numpy's data): encode(str, 'latin1'); torch >= 2.4
        # allows it too
        '_codecs.encode': codecs.encode,
    }
    get_layout = getattr(torch.serialization, '_get_layout', None)
    if get_layout is not None:
        allowed['torch.serialization._get_layout'] = get_layout
    for value in vars(torch).values():
        if isinstance(value, torch.dtype):
            allowed[str(value)] = value
    for cls in list(getattr(torch, '_tensor_classes', ())) + list(
            getattr(torch, '_storage_classes', ())):
        allowed[f'{cls.__module__}.{cls.__name__}'] = cls
    for name in _REBUILD_FUNCTIONS:
        function = getattr(torch._utils, name, None)
        if function is not None:
            allowed[f'torch._utils.{name}'] = function
    allowed['torch._tensor._rebuild_from_type_v2'] = torch._tensor._rebuild_from_type_v2
    return allowed


class RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` that resolves only an allowlist of globals.

    Args:
        extra: ``(object, 'module.name')`` pairs allowed besides torch's own list (the
            checkpoint decoders).
    """

    def __init__(self, extra: list[tuple[Callable[..., Any], str]]) -> None:
        allowed = torch_weights_only_globals()
        allowed.update({name: obj for obj, name in extra})

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                # pickle protocol 2 (torch.save's) writes python 2 names (__builtin__.getattr):
                # the same renaming as pickle's own find_class
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
                full_name = f'{module}.{name}'
                if full_name in allowed:
                    return allowed[full_name]
                raise pickle.UnpicklingError(
                    f'checkpoint asks for the global {full_name!r}, which dualopt_mm does not '
                    f'allow (torch {torch.__version__} has no scoped weights_only allowlist, '
                    f'so mmengine checkpoints are read through an allowlist unpickler: tensors '
                    f'and what mmengine 0.10 checkpoints contain). Load a file you trust with '
                    f'torch.load(..., weights_only=False)')

        self.Unpickler = Unpickler
        self.UnpicklingError = pickle.UnpicklingError
        self.__name__ = 'dualopt_mm_restricted_pickle'

    def load(self, file: Any, **kwargs: Any) -> Any:
        """``pickle.load`` through the restricted unpickler (torch's legacy format uses it)."""
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        import io

        return self.load(io.BytesIO(data), **kwargs)


@contextlib.contextmanager
def default_load_kwargs(**defaults: Any) -> Iterator[None]:
    """``torch.load`` with ``defaults`` for calls that give neither ``weights_only`` nor
    ``pickle_module`` (callers that choose either keep their choice)."""
    original = torch.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get('weights_only') is None and kwargs.get('pickle_module') is None \
                and len(args) < 3:
            kwargs.pop('weights_only', None)
            kwargs.pop('pickle_module', None)
            kwargs.update(defaults)
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
