"""The committed slice of the real-data benchmark reproduces: a change of code (or of the
environment) that moves real_finetune.py's numbers moves these
(projects/experiments/finetune_slice.py; docs/experiments.md, "Reproducibility")."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'projects' / 'experiments'))
from test_real_finetune import _run, needs_data  # noqa: E402

SLICE = ROOT / 'projects' / 'experiments' / 'finetune_slice.py'
RECORD = ROOT / 'docs' / 'results' / 'real_finetune_slice.json'


def test_record_names_the_committed_tree_it_came_from() -> None:
    record = json.loads(RECORD.read_text())
    prov = record['provenance']
    assert re.fullmatch(r'[0-9a-f]{40}', prov['git_commit'] or ''), prov['git_commit']
    assert prov['git_dirty'] is False, 'the slice was recorded from a modified tree'
    ancestor = subprocess.run(['git', 'merge-base', '--is-ancestor', prov['git_commit'], 'HEAD'],
                              cwd=ROOT, capture_output=True)
    if ancestor.returncode != 128:          # 128: no git history here (an archive, a shallow copy)
        assert ancestor.returncode == 0, f"{prov['git_commit']} is not in this branch's history"
    num = prov['numerics']
    assert num['pinned'] and num['aten_cpu_capability'] == 'AVX2', num
    assert num['deterministic_algorithms'] and prov['threads'] == 1
    assert [r['task'] for r in record['runs']] == ['det', 'seg']


def test_compare_is_exact_in_the_recorded_environment() -> None:
    import finetune_slice
    record = json.loads(RECORD.read_text())
    moved = json.loads(json.dumps(record))
    moved['runs'][0]['drift']['stem'] *= 1 + 1e-12            # one ulp-sized change is seen
    assert finetune_slice.compare(record, record) == []
    assert finetune_slice.compare(record, moved) == [
        f"det drift[stem]: recorded {record['runs'][0]['drift']['stem']!r}, "
        f"now {moved['runs'][0]['drift']['stem']!r}"]
    moved['provenance']['versions']['torch'] = 'other'         # another environment: tolerance
    assert finetune_slice.compare(record, moved) == []
    moved['runs'][1]['metrics']['drift_all'] *= 1.1
    assert len(finetune_slice.compare(record, moved)) == 1


@pytest.mark.slow
@needs_data
def test_slice_reproduces_the_record() -> None:
    """Reruns the slice (det and seg DualOpt runs, seed 0, 2 / 3 iterations; ~50 s on 2 free
    cores) and compares every metric and per-block drift with the committed record."""
    proc = _run(str(SLICE), '--check', str(RECORD), timeout=600)
    assert proc.returncode == 0, (
        proc.stdout[-3000:] + proc.stderr[-3000:] + '\nIf the change is meant to move the '
        'results: commit it, rerun finetune_slice.py --write from the committed tree, commit '
        'the record (docs/experiments.md, "Reproducibility").')
    assert 'the slice reproduces' in proc.stdout
