"""Crafted checkpoint files: what an attacker would hand to ``load_from`` / ``--resume``.

Each payload is pickled by ``torch.save`` from a small object whose ``__reduce__`` names the
global the attack needs, so the file holds exactly the opcodes a hostile author would write.
Nothing here is ever loaded by an unrestricted unpickler.
"""
from __future__ import annotations

import builtins
import os
import subprocess
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

try:  # numpy >= 2
    from numpy._core import multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray  # type: ignore[no-redef]


class Reduce:
    """Pickles as ``func(*args)`` (then ``BUILD`` with ``state`` when given)."""

    def __init__(self, func: Callable[..., Any], args: tuple, state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


def forged_pointer() -> Any:
    """A void dtype with an object field, and an array whose 8 bytes are a forged pointer."""
    object_field = np.dtype([('f', 'O')])
    return Reduce(multiarray._reconstruct, (np.ndarray, (0,), b'b'),
                  (1, (1,), object_field, False, b'AAAAAAAA'))


def out_of_bounds() -> Any:
    """A scalar read with a dtype whose state claims 16 MiB items, from an 8-byte buffer."""
    huge = Reduce(np.dtype, ('V8', False, True),
                  (3, '|', None, None, None, 16 << 20, 1, 0))
    return Reduce(multiarray.scalar, (huge, b'12345678'))


def widened_float() -> Any:
    """A float64 dtype whose state claims a 16 MiB item size and object flags."""
    wide = Reduce(np.dtype, ('f8', False, True), (3, '<', None, None, None, 16 << 20, 8, 63))
    return Reduce(multiarray._reconstruct, (np.ndarray, (0,), b'b'),
                  (1, (1,), wide, False, b'12345678'))


def short_scalar() -> Any:
    """A float64 scalar built from 1 byte."""
    return Reduce(multiarray.scalar, (np.dtype('f8'), b'x'))


def history_buffer_rebinding() -> Any:
    """A real ``HistoryBuffer`` whose pickled statistics table maps 'mean' to ``max``: an
    unguarded ``__setstate__`` installs it class-wide, so every later mean is a max."""
    buffer = HistoryBuffer([1.0], [1])
    state = dict(max_length=1000000, _log_history=np.array([1.0]), _count_history=np.array([1]),
                 statistics_methods={'mean': HistoryBuffer.max})
    buffer.__getstate__ = lambda: state  # read by pickle on the instance
    return buffer


def getattr_chain() -> Any:
    """``getattr(getattr, '__self__')`` is the ``builtins`` module, the start of every chain."""
    return Reduce(getattr, (getattr, '__self__'))


def getattr_init() -> Any:
    return Reduce(getattr, (HistoryBuffer, '__init__'))


def os_system(marker: str) -> Any:
    return Reduce(os.system, (f'touch {marker}',))


def builtins_eval(marker: str) -> Any:
    return Reduce(builtins.eval, (f"open({marker!r}, 'w').close()",))


def subprocess_popen(marker: str) -> Any:
    return Reduce(subprocess.Popen, (['touch', marker],))


#: name -> builder(marker path) of the object to hide inside a checkpoint.
PAYLOADS: Dict[str, Callable[[str], Any]] = {
    'forged_pointer': lambda marker: forged_pointer(),
    'out_of_bounds': lambda marker: out_of_bounds(),
    'widened_float': lambda marker: widened_float(),
    'short_scalar': lambda marker: short_scalar(),
    'history_buffer_rebinding': lambda marker: history_buffer_rebinding(),
    'getattr_chain': lambda marker: getattr_chain(),
    'getattr_init': lambda marker: getattr_init(),
    'os_system': os_system,
    'builtins_eval': builtins_eval,
    'subprocess_popen': subprocess_popen,
}


def write_payload(name: str, path: str, marker: str,
                  state_dict: Optional[Dict[str, torch.Tensor]] = None) -> str:
    """Write an mmengine-shaped checkpoint with the payload in its message hub."""
    checkpoint = dict(
        meta=dict(epoch=1, iter=1),
        state_dict=state_dict or {},
        message_hub=dict(log_scalars={'train/loss': PAYLOADS[name](marker)},
                         runtime_info={}, resumed_keys={}),
    )
    torch.save(checkpoint, path)
    return path
