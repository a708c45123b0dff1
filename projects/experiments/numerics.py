"""Pinned CPU numerics for the real-data experiments, so that another machine gets the same bits.

The same code, versions and seed give different float results on different x86 CPUs because
the libraries under torch pick their kernels by the instruction set they find: ATen's own
vectorised kernels (AVX-512 or AVX2), MKL's GEMM (per-CPU code paths), oneDNN's primitives
(AVX-512 / AMX when present), numpy's OpenBLAS. :func:`pin` caps each at a level every
machine of this kind has, through environment variables these libraries read once, when they
first run; so it must run before torch / numpy are imported (``real_finetune.py`` calls it
before its other imports; worker processes are spawned and inherit the environment).

``DUALOPT_NUMERICS=native`` leaves the machine's defaults (to measure what the pins change);
:func:`state` is what a results file's provenance records. What the pins do not cover, and
the measured size of their effect: docs/experiments.md, "Reproducibility".
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

SWITCH = 'DUALOPT_NUMERICS'     # 'pinned' (default) or 'native'
PINS = {
    # MKL's conditional numerical reproducibility: one code path on every x86 CPU. Only
    # COMPATIBLE is honoured on AMD (MKL runs AVX2 / AVX512 as AUTO on non-Intel CPUs);
    # STRICT: the same bits whatever the memory alignment
    'MKL_CBWR': 'COMPATIBLE,STRICT',
    # oneDNN (mkldnn convolutions, matmuls): no AVX-512 / AMX kernels; older name too
    'ONEDNN_MAX_CPU_ISA': 'AVX2',
    'DNNL_MAX_CPU_ISA': 'AVX2',
    # ATen's vectorised CPU kernels (reductions, elementwise, softmax, ...)
    'ATEN_CPU_CAPABILITY': 'avx2',
    # numpy's OpenBLAS
    'OPENBLAS_CORETYPE': 'Haswell',
    # one thread per process unless torch.set_num_threads says otherwise (--threads)
    'OMP_NUM_THREADS': '1',
    'MKL_NUM_THREADS': '1',
    'OPENBLAS_NUM_THREADS': '1',
}
_PINNED: Optional[bool] = None      # None: pin() not called; False: native or too late


def mode() -> str:
    return 'native' if os.environ.get(SWITCH, 'pinned') == 'native' else 'pinned'


def pin() -> bool:
    """Set :data:`PINS` in the environment (overriding what was there) unless
    ``DUALOPT_NUMERICS=native``. Returns whether the pins are in force: False also when torch
    or numpy was imported before, since their libraries may have read the environment then."""
    global _PINNED
    if _PINNED is not None:
        return _PINNED
    late = [m for m in ('torch', 'numpy') if m in sys.modules]
    if mode() == 'native' or late:
        _PINNED = False
        return False
    os.environ.update(PINS)
    _PINNED = True
    return True


def configure_torch(threads: int) -> None:
    """Threads and deterministic algorithms (``warn_only``: an op without a deterministic CPU
    kernel warns instead of stopping a 40-minute benchmark; none warned in our runs)."""
    import torch
    torch.set_num_threads(threads)
    if mode() == 'pinned':
        torch.use_deterministic_algorithms(True, warn_only=True)


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or 'unknown'


def _cpu_flags() -> str:
    """The instruction sets that decide the libraries' dispatch, of those the CPU has."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((ln.split(':', 1)[1].split() for ln in f if ln.startswith('flags')), [])
    except OSError:
        return 'unknown'
    return ' '.join(x for x in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_tile')
                    if x in flags)


def state() -> Dict[str, Any]:
    """What provenance records: the mode, the variables as set, what torch runs."""
    out: Dict[str, Any] = {'mode': mode(), 'pinned': bool(_PINNED),
                           'env': {k: os.environ.get(k) for k in PINS},
                           'cpu': _cpu_model(), 'cpu_isa': _cpu_flags()}
    try:
        import torch
        out['aten_cpu_capability'] = torch.backends.cpu.get_cpu_capability()
        out['deterministic_algorithms'] = torch.are_deterministic_algorithms_enabled()
        out['deterministic_warn_only'] = torch.is_deterministic_algorithms_warn_only_enabled()
    except Exception as error:  # noqa: BLE001 - provenance must never fail a run
        out['torch'] = f'unavailable: {error}'
    return out


def describe(st: Dict[str, Any]) -> str:
    """A few words for a rendered table: 'numerics pinned (MKL COMPATIBLE, ...)'."""
    if not st.get('pinned'):
        return f"numerics native ({st.get('aten_cpu_capability', '?')})"
    env = st.get('env', {})
    return (f"numerics pinned (MKL_CBWR {env.get('MKL_CBWR')}, oneDNN ≤ "
            f"{env.get('ONEDNN_MAX_CPU_ISA')}, ATen {st.get('aten_cpu_capability')}, "
            f"deterministic algorithms)")
