r"""The CPU fused kernels: the learning step and the review in one pass over memory.

torch's fused kernel followed by a review pass reads and writes every parameter twice (AdamW:
28 + 12 bytes per float32 parameter instead of 28 + 4). These kernels do the loop's operations
(:func:`~dualopt_mm.optim.adam_functional._single_tensor_adam`,
:func:`~dualopt_mm.optim.sgd_functional._single_tensor_sgd`, then
:func:`~dualopt_mm.optim.review.review_tensor_`) element by element in one pass, in the
tensor's precision, in the loop's order (no reassociation, no fused multiply-add), for float32
and float64 tensors with an anchor of their dtype, a bfloat16 anchor (float32 tensors) or none.

They are plain C (no torch headers), compiled once per machine with the system C compiler
(``cc -O3 -march=native``, about a second) into a cache folder (``$DUALOPT_MM_CACHE``, else
``~/.cache/dualopt_mm``), loaded through :mod:`ctypes` and called on tensor pointers: ctypes
releases the GIL, so with ``torch.get_num_threads() > 1`` the tensors' slices run on that many
threads. The log says once per process how long the compilation (or the load) took. Without a
working compiler it says so once and the fused path runs torch's fused kernel, then the review
(:mod:`~dualopt_mm.optim.fused`). ``DUALOPT_MM_NATIVE=0`` switches them off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ['NativeKernels', 'native_kernels']

_SOURCE = r'''
#include <math.h>
#include <stdint.h>
#include <string.h>

/* torch's CPU lerp: exact at both ends */
#define LERP(s, e, w) ((w) < (T)0.5 ? (s) + (w) * ((e) - (s)) : (e) - ((e) - (s)) * ((T)1 - (w)))

static inline float bf16_to_f32(uint16_t x) {
    uint32_t bits = ((uint32_t)x) << 16; float f; memcpy(&f, &bits, 4); return f;
}

/* the review, by anchor kind: 0 none (a = 0: p *= 1 - w, skipped at w = 0), 1 of the dtype,
   2 bfloat16. One function per kind and per AMSGrad / momentum: no memory access under a
   branch, so the compiler vectorizes every loop; the other flags are selects. */
#define REVIEW_0 pi = w != (T)0 ? pi * ((T)1 - w) : pi;
#define REVIEW_1 pi = LERP(pi, ((const T*)a)[i], w);
#define REVIEW_2 pi = LERP(pi, (T)bf16_to_f32(((const uint16_t*)a)[i]), w);
#define VMAX_0 T vu = vi;
#define VMAX_1 T vu = vmax[i] > vi ? vmax[i] : vi; vmax[i] = vu;
#define BUF_0 T bi = (T)0; (void)bi;
#define BUF_1 T bi = first ? gi : b[i] * mom + omd * gi; b[i] = bi; \
              gi = nesterov ? gi + mom * bi : bi;

#define ADAM(SUFFIX, SQRT, AMS, KIND)                                                  \
void adam_##SUFFIX##_a##AMS##_k##KIND(                                                 \
        T* restrict p, const T* restrict g, T* restrict m, T* restrict v,              \
        T* restrict vmax, const void* restrict a, int64_t n, T sign, T decay,          \
        T coupled, T omb1, T b2, T omb2, T neg_step, T bc2s, T eps, T w) {             \
    for (int64_t i = 0; i < n; ++i) {                                                  \
        T gi = sign * g[i];                                                            \
        T pi = p[i];                                                                   \
        gi = coupled != (T)0 ? gi + coupled * pi : gi;                                 \
        pi = decay != (T)1 ? pi * decay : pi;                                          \
        T mi = LERP(m[i], gi, omb1);                                                   \
        T vi = v[i] * b2 + omb2 * gi * gi;                                             \
        VMAX_##AMS                                                                     \
        T d = SQRT(vu) / bc2s + eps;                                                   \
        pi = pi + neg_step * (mi / d);                                                 \
        REVIEW_##KIND                                                                  \
        p[i] = pi; m[i] = mi; v[i] = vi;                                               \
    }                                                                                  \
}

#define SGD(SUFFIX, MOM, KIND)                                                         \
void sgd_##SUFFIX##_m##MOM##_k##KIND(                                                  \
        T* restrict p, const T* restrict g, T* restrict b, const void* restrict a,     \
        int64_t n, int nesterov, int first, T sign, T wd, T mom, T omd, T neg_lr, T w) { \
    for (int64_t i = 0; i < n; ++i) {                                                  \
        T gi = sign * g[i];                                                            \
        T pi = p[i];                                                                   \
        gi = wd != (T)0 ? gi + wd * pi : gi;                                           \
        BUF_##MOM                                                                      \
        pi = pi + neg_lr * gi;                                                         \
        REVIEW_##KIND                                                                  \
        p[i] = pi;                                                                     \
    }                                                                                  \
}

#define ALL(SUFFIX, SQRT) \
    ADAM(SUFFIX, SQRT, 0, 0) ADAM(SUFFIX, SQRT, 0, 1) ADAM(SUFFIX, SQRT, 0, 2) \
    ADAM(SUFFIX, SQRT, 1, 0) ADAM(SUFFIX, SQRT, 1, 1) ADAM(SUFFIX, SQRT, 1, 2) \
    SGD(SUFFIX, 0, 0) SGD(SUFFIX, 0, 1) SGD(SUFFIX, 0, 2) \
    SGD(SUFFIX, 1, 0) SGD(SUFFIX, 1, 1) SGD(SUFFIX, 1, 2)

#define T float
ALL(f32, sqrtf)
#undef T
#define T double
ALL(f64, sqrt)
#undef T
'''

# no reassociation and no contraction into fused multiply-adds: the loop's rounding
_FLAGS = ['-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math', '-ffp-contract=off',
          '-shared', '-fPIC', '-std=c99']

_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}

logger = logging.getLogger('dualopt_mm')


def _log(message: str) -> None:
    """One line in mmengine's log when mmengine runs this process, else the package logger."""
    mmengine_logging = sys.modules.get('mmengine.logging')
    if mmengine_logging is not None:
        mmengine_logging.print_log(message, logger='current', level=logging.INFO)
    else:
        logger.info(message)


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (a cache per CPU)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags'))][:2]
    except OSError:
        lines = [platform.processor()]
    return platform.machine() + ''.join(lines)


class NativeKernels:
    """The loaded kernels; :meth:`run` calls one on many tensors, on torch's thread count."""

    _SLICE = 1 << 20  # elements per piece when the work is spread over threads

    def __init__(self, library: ctypes.CDLL) -> None:
        self._functions: dict[str, Any] = {}
        pointer, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for suffix, real in (('f32', ctypes.c_float), ('f64', ctypes.c_double)):
            for flag in (0, 1):
                for kind in (0, 1, 2):
                    adam = getattr(library, f'adam_{suffix}_a{flag}_k{kind}')
                    adam.argtypes = [pointer] * 6 + [i64] + [real] * 10
                    adam.restype = None
                    sgd = getattr(library, f'sgd_{suffix}_m{flag}_k{kind}')
                    sgd.argtypes = [pointer] * 4 + [i64, c_int, c_int] + [real] * 6
                    sgd.restype = None
                    self._functions[f'adam_{suffix}_a{flag}_k{kind}'] = adam
                    self._functions[f'sgd_{suffix}_m{flag}_k{kind}'] = sgd
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_size = 0

    @staticmethod
    def supports(param: Tensor, anchor: Optional[Tensor], others: Sequence[Optional[Tensor]]
                 ) -> bool:
        """Whether one tensor can take the kernels: float32 / float64 on CPU, contiguous
        like its gradient and state (same dtype), anchor of its dtype, bf16 (float32) or
        none, gradient dense."""
        if param.device.type != 'cpu' or param.dtype not in _SUFFIX:
            return False
        for t in [param, *others]:
            if t is not None and (t.is_sparse or not t.is_contiguous() or t.dtype != param.dtype
                                  or t.device.type != 'cpu'):
                return False
        if anchor is None:
            return True
        return anchor.is_contiguous() and (anchor.dtype == param.dtype or (
            anchor.dtype == torch.bfloat16 and param.dtype == torch.float32))

    @staticmethod
    def anchor_kind(param: Tensor, anchor: Optional[Tensor]) -> int:
        if anchor is None:
            return 0
        return 1 if anchor.dtype == param.dtype else 2

    def run(self, name: str, jobs: list[tuple[torch.dtype, int, int, list[Optional[Tensor]],
                                             tuple]]) -> None:
        """Call kernel ``name`` (``'adam'`` / ``'sgd'``) once per job: ``(dtype, flag, anchor
        kind, tensors, scalars)``; ``flag``: AMSGrad (Adam) / a momentum buffer (SGD);
        tensors the pointer arguments (``None``: NULL), scalars the arguments after the
        element count. With several torch threads, large tensors are cut into pieces (pointer
        offsets) that run on a thread pool."""
        threads = torch.get_num_threads()
        calls = []
        for dtype, flag, kind, tensors, scalars in jobs:
            letter = 'a' if name == 'adam' else 'm'
            function = self._functions[f'{name}_{_SUFFIX[dtype]}_{letter}{flag}_k{kind}']
            n = next(t for t in tensors if t is not None).numel()
            step = n if threads == 1 else self._SLICE
            for start in range(0, max(n, 1), max(step, 1)):
                count = min(step, n - start)
                pointers = [None if t is None else t.data_ptr() + start * t.element_size()
                            for t in tensors]
                calls.append((function, pointers, count, scalars))
        if threads == 1 or len(calls) == 1:
            for function, pointers, count, scalars in calls:
                function(*pointers, count, *scalars)
            return
        if self._pool is None or self._pool_size != threads:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._pool_size = ThreadPoolExecutor(threads), threads
        shares: list[list[tuple]] = [[] for _ in range(threads)]
        loads = [0] * threads
        for call in sorted(calls, key=lambda c: -c[2]):  # largest first, to the least loaded
            k = loads.index(min(loads))
            shares[k].append(call)
            loads[k] += call[2]

        def work(share: list[tuple]) -> None:
            for function, pointers, count, scalars in share:
                function(*pointers, count, *scalars)

        for future in [self._pool.submit(work, share) for share in shares if share]:
            future.result()


def _cache_dir() -> str:
    return os.environ.get('DUALOPT_MM_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'dualopt_mm')


@functools.cache
def native_kernels() -> Optional[NativeKernels]:
    """The CPU kernels, built or loaded once per process; ``None`` (said once) without a
    working C compiler, or with ``DUALOPT_MM_NATIVE=0``."""
    if os.environ.get('DUALOPT_MM_NATIVE', '1') == '0':
        return None
    start = time.perf_counter()
    key = hashlib.sha256('\0'.join([_SOURCE, *_FLAGS, _cpu_identity()]).encode()).hexdigest()
    path = os.path.join(_cache_dir(), f'fused_cpu_{key[:16]}.so')
    built = False
    try:
        if not os.path.exists(path):
            compiler = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
            if compiler is None:
                raise OSError('no C compiler found (cc, gcc or $CC)')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
                source = os.path.join(tmp, 'fused_cpu.c')
                with open(source, 'w', encoding='utf-8') as f:
                    f.write(_SOURCE)
                target = os.path.join(tmp, 'fused_cpu.so')
                result = subprocess.run([compiler, *_FLAGS, source, '-o', target, '-lm'],
                                        capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise OSError(f'{compiler} failed: {result.stderr.strip()[-300:]}')
                os.replace(target, path)  # atomic: concurrent processes agree
            built = True
        kernels = NativeKernels(ctypes.CDLL(path))
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        warnings.warn(f'DualOpt fused=True: the CPU kernels could not be built ({error}); '
                      f'using torch\'s fused kernel then the review pass (same results, '
                      f'slower)', stacklevel=2)
        return None
    seconds = time.perf_counter() - start
    _log(f'DualOpt fused=True: CPU kernels {"compiled" if built else "loaded"} in '
         f'{seconds:.2f} s ({path})')
    return kernels
