"""What the tests need to know about the installed torch: feature-test skips naming the
version, and version-independent readers of torch's serialization allowlist.

The package's own probes are in :mod:`dualopt_mm.compat.torch_features`; this module turns them
into pytest markers and gives the tests what torch < 2.5 lacks.
"""
from __future__ import annotations

import importlib
import inspect
import pickletools
import zipfile
from typing import Set

import pytest
import torch

from dualopt_mm.compat.restricted_unpickler import torch_weights_only_globals

TORCH = torch.__version__.split('+')[0]

#: torch >= 2.1 updates Adam's first moment with ``lerp_`` (as DualOpt does); torch 2.0 with
#: ``mul_(beta1).add_(grad, alpha=1 - beta1)``, which rounds differently in the last bit
ADAM_FIRST_MOMENT_IS_LERP = 'exp_avg.lerp_(' in inspect.getsource(
    importlib.import_module('torch.optim.adam'))

needs_amp_grad_scaler = pytest.mark.skipif(
    getattr(torch.amp, 'GradScaler', None) is None,
    reason=f'torch {TORCH} has no torch.amp.GradScaler (CPU grad scaling came in torch 2.3)')
needs_safe_globals = pytest.mark.skipif(
    not callable(getattr(torch.serialization, 'get_safe_globals', None)),
    reason=f'torch {TORCH} has no process-wide safe list to compare (torch.serialization.'
           f'get_safe_globals came in torch 2.5)')


def safe_global_names() -> Set[str]:
    """The names on torch's process-wide ``weights_only`` safe list (empty before 2.5)."""
    get = getattr(torch.serialization, 'get_safe_globals', None)
    if get is None:
        return set()
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
            for g in get()}


def checkpoint_globals(path: str) -> Set[str]:
    """The globals a checkpoint names beyond what torch's ``weights_only`` unpickler allows:
    torch's own ``get_unsafe_globals_in_checkpoint`` where it exists (>= 2.6), else the
    ``GLOBAL`` / ``STACK_GLOBAL`` opcodes of its pickle read with ``pickletools``."""
    get = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if get is not None:
        return set(get(path))
    allowed = set(torch_weights_only_globals())
    found: Set[str] = set()
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))
    strings: list = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == 'GLOBAL':
            found.add(arg.replace(' ', '.'))
        elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
            found.add(f'{strings[-2]}.{strings[-1]}')
        if isinstance(arg, str):
            strings.append(arg)
    renamed = {'__builtin__.': 'builtins.'}
    for old, new in renamed.items():
        found = {new + n[len(old):] if n.startswith(old) else n for n in found}
    return {n for n in found if n not in allowed and 'Storage' not in n}
