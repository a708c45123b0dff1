#!/usr/bin/env python
"""A tiny slice of ``real_finetune.py`` whose numbers are committed, so that a change that moves
the benchmark's results is seen (tests/tools/test_finetune_slice.py reruns it).

The slice: the DualOpt config of each task (det: DualOptSGD, seg: DualOptAdamW), seed 0, the
``--quick`` schedule (det 2, seg 3 iterations; 2 evaluation images), one process, one thread,
pinned numerics (:mod:`numerics`). Recorded per run: every task metric, the retention probe
and the per-block drift, as full floats. ``--write`` records them with the provenance (commit:
run it from a committed tree); ``--check`` reruns and compares: exactly when the environment
is the recorded one (library and data versions, numerics), else within :data:`TOLERANCE`.

    python projects/experiments/finetune_slice.py --write docs/results/real_finetune_slice.json
    python projects/experiments/finetune_slice.py --check docs/results/real_finetune_slice.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'data'))
sys.path.insert(0, str(ROOT / 'projects' / 'experiments'))

import numerics  # noqa: E402

if __name__ == '__main__':
    numerics.pin()      # before real_finetune imports torch
import provenance  # noqa: E402
import real_finetune as rf  # noqa: E402

UNITS = (('det', 'dualopt', 0.01, 0), ('seg', 'dualopt', 0.01, 0))
RESULTS = ROOT / 'docs' / 'results' / 'real_finetune_slice.json'
# another environment (versions, numerics, CPU dispatch): |a - b| <= abs + rel * |b| per value;
# the native-vs-pinned difference on one machine was at most 2e-4 relative (docs/experiments.md)
TOLERANCE = {'rel': 1e-2, 'abs': 1e-6, 'metric_abs': 0.02}
# what must match for the comparison to be exact
ENV_KEYS = ('versions', 'data', 'python')


def run_slice() -> Dict[str, Any]:
    """The slice's runs, in this process, with their provenance."""
    import real_sources
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        args = rf.parse_args(['--quick', '--seeds', '0', '--jobs', '1', '--threads', '1',
                              '--out-dir', tmp])
        numerics.configure_torch(args.threads)
        prov = provenance.collect(args.threads, data=real_sources.versions())
        worker = rf.Worker(args)
        runs = []
        for unit in UNITS:
            r = worker(unit)
            keep = ('task', 'method', 'knob', 'value', 'seed', 'metrics', 'drift', 'train_s',
                    'wall_s')
            runs.append({k: r[k] for k in keep})
    return {'tool': 'projects/experiments/finetune_slice.py', 'units': [list(u) for u in UNITS],
            'iters': dict(args.iters), 'eval_images': args.eval_images, 'runs': runs,
            'wall_s': time.time() - t0, 'provenance': prov}


def _env(prov: Dict[str, Any]) -> Dict[str, Any]:
    env = {k: prov.get(k) for k in ENV_KEYS}
    num = prov.get('numerics', {})
    env['numerics'] = (num.get('pinned'), num.get('env'), num.get('aten_cpu_capability'))
    return env


def compare(recorded: Dict[str, Any], fresh: Dict[str, Any]) -> List[str]:
    """The values that differ (exactly, or beyond :data:`TOLERANCE` when the environment is
    not the recorded one); empty when the rerun reproduces the record."""
    exact = _env(recorded['provenance']) == _env(fresh['provenance'])
    diffs = []
    if [r['task'] for r in recorded['runs']] != [r['task'] for r in fresh['runs']]:
        return ['the runs differ: ' + str([r['task'] for r in fresh['runs']])]
    for old, new in zip(recorded['runs'], fresh['runs']):
        for part in ('metrics', 'drift'):
            if set(old[part]) != set(new[part]):
                keys = sorted(set(old[part]) ^ set(new[part]))
                diffs.append(f'{old["task"]} {part}: keys {keys} are not in both')
                continue
            for key, a in old[part].items():
                b = new[part][key]
                if exact:
                    ok = a == b
                elif part == 'metrics' and key not in ('feature_cos', 'drift_all'):
                    scale = 100 if old['task'] == 'seg' else 1     # mIoU in %, AP in [0, 1]
                    ok = abs(a - b) <= TOLERANCE['metric_abs'] * scale
                else:
                    ok = abs(a - b) <= TOLERANCE['abs'] + TOLERANCE['rel'] * abs(a)
                if not ok or not math.isfinite(b):
                    diffs.append(f'{old["task"]} {part}[{key}]: recorded {a!r}, now {b!r}')
    return diffs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--write', metavar='JSON', help='run the slice and record it here')
    group.add_argument('--check', metavar='JSON', help='run the slice and compare with this')
    args = parser.parse_args(argv)
    fresh = run_slice()
    if args.write:
        if fresh['provenance']['git_dirty']:
            print('warning: the tree has local changes; the record names a commit it did not '
                  'come from (commit first)', file=sys.stderr)
        Path(args.write).write_text(json.dumps(fresh, indent=1) + '\n')
        print(f'wrote {args.write} ({fresh["wall_s"]:.0f} s)')
        return 0
    recorded = json.loads(Path(args.check).read_text())
    diffs = compare(recorded, fresh)
    how = 'exactly' if _env(recorded['provenance']) == _env(fresh['provenance']) else \
        f'within {TOLERANCE} (environment differs from the record)'
    if diffs:
        print(f'the slice moved (compared {how}):\n  ' + '\n  '.join(diffs))
        return 1
    print(f'the slice reproduces {args.check} {how} ({fresh["wall_s"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
