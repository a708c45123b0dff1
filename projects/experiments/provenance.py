"""What produced a results file: code version, library versions, threads and BLAS.

Every results JSON of ``projects/experiments/`` stores :func:`collect` under ``provenance`` so a
number can be traced to the commit and the environment it came from (CPU results depend on
the BLAS / oneDNN build and the number of threads as well as on the code).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numerics  # sibling module: the pinned CPU numerics (side-effect free to import)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ('torch', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain',
            'timm', 'scikit-learn', 'pycocotools', 'Pillow', 'torchvision')


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def blas_info() -> Dict[str, str]:
    """torch's BLAS / LAPACK / oneDNN build lines and numpy's BLAS name."""
    info: Dict[str, str] = {}
    try:
        import torch
        config = torch.__config__.show()
        for key in ('BLAS_INFO', 'LAPACK_INFO', 'USE_MKLDNN', 'USE_OPENMP'):
            match = re.search(rf'{key}=([^,\n]+)', config)
            if match:
                info[f'torch.{key}'] = match.group(1).strip()
        match = re.search(r'Intel\(R\) oneAPI Math Kernel Library Version ([^\n]+)', config)
        if match:
            info['torch.mkl'] = match.group(1).strip()
        lines = [ln.strip() for ln in torch.__config__.parallel_info().splitlines()]
        info['torch.parallel'] = '; '.join(ln for ln in lines if ln and ln != 'ATen/Parallel:')
    except Exception as error:  # noqa: BLE001 - provenance must never fail a run
        info['torch'] = f'unavailable: {error}'
    try:
        import numpy as np
        cfg = np.show_config(mode='dicts')
        blas = cfg.get('Build Dependencies', {}).get('blas', {})
        info['numpy.blas'] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception as error:  # noqa: BLE001
        info['numpy.blas'] = f'unavailable: {error}'
    return info


def collect(threads: Optional[int] = None, argv: Optional[Sequence[str]] = None,
            data: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Provenance of a run: commit (and whether the tree had local changes), command line,
    Python / platform, library versions, torch threads, BLAS, the data packages and the CPU
    numerics (pinned or native, :mod:`numerics`)."""
    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    status = _git('status', '--porcelain', '--untracked-files=no')
    return {
        'git_commit': _git('rev-parse', 'HEAD'),
        'git_dirty': bool(status) if status is not None else None,
        'git_dirty_files': sorted(line[3:] for line in (status or '').splitlines()),
        'command': ' '.join(argv if argv is not None else sys.argv),
        'python': sys.version.split()[0],
        'platform': platform.platform(),
        'cpu_count': os.cpu_count(),
        'threads': threads if threads is not None else torch_threads,
        'torch_num_threads': torch_threads,
        'versions': {name: _version(name) for name in PACKAGES},
        'blas': blas_info(),
        'data': data or {},
        'numerics': numerics.state(),
    }


def describe(prov: Dict[str, Any]) -> str:
    """One markdown line naming the commit, key versions and threads."""
    v = prov.get('versions', {})
    commit = (prov.get('git_commit') or 'unknown')[:10]
    commit += ' (dirty)' if prov.get('git_dirty') else ''
    return (f"commit {commit}; torch {v.get('torch')}, mmengine {v.get('mmengine')}, "
            f"mmdet {v.get('mmdet')}, mmseg {v.get('mmsegmentation')}, timm {v.get('timm')}, "
            f"numpy {v.get('numpy')}; {prov.get('threads')} torch thread(s); "
            f"BLAS {prov.get('blas', {}).get('torch.BLAS_INFO', '?')}"
            + (f"; {numerics.describe(prov['numerics'])}" if 'numerics' in prov else ''))
