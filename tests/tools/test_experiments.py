"""Tests of projects/experiments/{forgetting,scratch}.py in their ``--quick`` configuration.

They run the real scripts (subprocess, seconds each) and check the output format: the
markdown table's columns and rows, the JSON keys, finite numbers in range, all methods present.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORGETTING = ROOT / 'projects' / 'experiments' / 'forgetting.py'
SCRATCH = ROOT / 'projects' / 'experiments' / 'scratch.py'
PLOT = ROOT / 'tools' / 'analysis' / 'plot_drift.py'
FT_METHODS = ['finetune', 'l2sp', 'dualopt', 'dualopt_ref']
SCRATCH_METHODS = ['no_decay', 'adamw', 'dualopt', 'dualopt_reverse']
LAYERS = ['backbone.conv1', 'backbone.conv2', 'backbone.conv3', 'backbone.conv4', 'backbone.fc']
PM = re.compile(r'^-?\d+\.\d+ ± \d+\.\d+$')


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, 'MPLBACKEND': 'Agg'}, cwd=str(ROOT))
    return proc


def table_rows(markdown: str, header_start: str) -> List[List[str]]:
    """Cells of the first markdown table whose header row starts with ``header_start``."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i:]:
                if not row.startswith('|'):
                    break
                rows.append([c.strip() for c in row.strip().strip('|').split('|')])
            return rows
    raise AssertionError(f'no table starting with {header_start!r} in:\n{markdown}')


def assert_summary(summary: Dict[str, Any], metrics: List[str], n_seeds: int) -> None:
    for metric in metrics:
        entry = summary[metric]
        assert set(entry) == {'mean', 'std', 'values'}
        assert len(entry['values']) == n_seeds
        assert all(math.isfinite(v) for v in entry['values'])
        assert entry['mean'] == pytest.approx(sum(entry['values']) / n_seeds)
        assert math.isfinite(entry['std']) and entry['std'] >= 0


@pytest.fixture(scope='module')
def forgetting_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('forgetting')
    proc = run(FORGETTING, '--quick', '--out-dir', str(out), '--no-progress')
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / 'stdout.md').write_text(proc.stdout)
    return out


@pytest.fixture(scope='module')
def scratch_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('scratch')
    proc = run(SCRATCH, '--quick', '--out-dir', str(out), '--no-progress')
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / 'stdout.md').write_text(proc.stdout)
    return out


def _without_library_log_lines(text: str) -> str:
    """stdout minus the log lines libraries print at import (with deepspeed installed,
    ``import mmengine.runner`` imports it and it logs its accelerator choice to stdout)."""
    return '\n'.join(line for line in text.splitlines()
                     if not re.match(r'\[\d{4}-\d\d-\d\d [\d:,]+\] \[[A-Z]+\]', line))


def test_forgetting_table(forgetting_out: Path) -> None:
    markdown = (forgetting_out / 'results.md').read_text()
    stdout = _without_library_log_lines((forgetting_out / 'stdout.md').read_text())
    assert stdout.strip().startswith(markdown.strip()[:200])
    rows = table_rows(markdown, '| method | setting |')
    assert rows[0] == ['method', 'setting', 'downstream acc (%)', 'Δ downstream vs full FT (pts)',
                       'upstream probe (%)', 'forgetting (pts)', 'upstream, old head (%)',
                       'backbone drift']
    body = rows[2:]
    assert len(body) == 1 + len(FT_METHODS)  # frozen-backbone reference row + one per method
    labels = [r[0] for r in body]
    for needle in ('frozen', 'full fine-tuning (AdamW)', 'L2-SP', 'DualOptAdamW',
                   'reference=True'):
        assert any(needle in label for label in labels), (needle, labels)
    for row in body:
        assert all(PM.match(cell) for cell in row[2:]), row
    ft_row = next(r for r in body if r[0].startswith('full fine-tuning'))
    assert ft_row[3] == '0.00 ± 0.00'  # paired difference to itself
    assert 'Wall time' in markdown and 'python' in markdown


def test_forgetting_json(forgetting_out: Path) -> None:
    result = json.loads((forgetting_out / 'results.json').read_text())
    assert {'config', 'command', 'environment', 'layers', 'pretrained', 'methods',
            'wall_time_s'} <= set(result)
    assert result['layers'] == LAYERS
    n_seeds = len(result['config']['seeds'])
    assert n_seeds == 2 and result['config']['quick'] is True
    assert list(result['methods']) == FT_METHODS
    for key in ('up_head', 'up_probe', 'down_probe'):
        mean, std = result['pretrained'][key]
        assert 0 <= mean <= 100 and std >= 0
    metrics = ['down_val', 'down_test', 'up_probe', 'forgetting', 'up_old_head', 'drift_all']
    for key, method in result['methods'].items():
        assert method['selected_value'] == method['default_value']  # quick: no sweep
        assert len(method['sweep']) == 1
        for which in ('default', 'selected'):
            summary = method[which]
            assert_summary(summary, metrics, n_seeds)
            for metric in ('down_val', 'down_test', 'up_probe', 'up_old_head'):
                assert all(0 <= v <= 100 for v in summary[metric]['values']), (key, metric)
            assert summary['drift_all']['mean'] > 0, key
            assert set(summary['drift_per_layer']) == set(LAYERS)
            assert all(v['mean'] >= 0 for v in summary['drift_per_layer'].values())
        probe_pre = result['pretrained_per_seed']['up_probe']
        forgetting = method['default']['forgetting']['values']
        probe = method['default']['up_probe']['values']
        assert forgetting == pytest.approx([p - q for p, q in zip(probe_pre, probe)])


def test_forgetting_rollback_reduces_shallow_drift(forgetting_out: Path) -> None:
    """Same init, batches and base step: the review step must pull conv1 closer to θ_0."""
    result = json.loads((forgetting_out / 'results.json').read_text())
    drift = {k: m['default']['drift_per_layer'] for k, m in result['methods'].items()}
    assert drift['dualopt']['backbone.conv1']['mean'] < drift['finetune']['backbone.conv1']['mean']
    assert drift['l2sp']['backbone.conv1']['mean'] < drift['finetune']['backbone.conv1']['mean']


def test_forgetting_drift_files_and_plot(forgetting_out: Path, tmp_path: Path) -> None:
    with open(forgetting_out / 'drift.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {'method', 'knob', 'value', 'seed', 'layer', 'layer_index', 'drift'}
    assert (forgetting_out / 'drift_default.json').is_file()
    assert (forgetting_out / 'tradeoff.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert len(rows) == 2 * len(FT_METHODS) * len(LAYERS)
    assert {r['method'] for r in rows} == set(FT_METHODS)
    assert all(math.isfinite(float(r['drift'])) and float(r['drift']) >= 0 for r in rows)

    drift = json.loads((forgetting_out / 'drift.json').read_text())
    assert drift['layers'] == LAYERS and list(drift['methods']) == FT_METHODS
    for method in drift['methods'].values():
        assert len(method['mean']) == len(method['std']) == len(LAYERS)
    out = tmp_path / 'drift.png'
    proc = run(PLOT, '--drift', str(forgetting_out / 'drift.json'), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_forgetting_sgd_base(tmp_path: Path) -> None:
    proc = run(FORGETTING, '--quick', '--base', 'sgd', '--methods', 'finetune', 'dualopt',
               '--seeds', '3', '--out-dir', str(tmp_path), '--no-progress')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / 'results.json').read_text())
    assert list(result['methods']) == ['finetune', 'dualopt']
    assert 'DualOptSGD' in result['methods']['dualopt']['label']
    assert result['config']['lr'] == 0.03 and result['config']['seeds'] == [3]


def test_forgetting_sweep_selects_on_validation() -> None:
    spec = importlib.util.spec_from_file_location(
        'common', ROOT / 'projects' / 'experiments' / 'common.py')
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    sweep = [{'value': v, 'summary': {'down_val': {'mean': m}}}
             for v, m in [(0.1, 90.0), (0.3, 95.0), (1.0, 95.0), (3.0, 80.0)]]
    assert common.select_best(sweep, default=1.0)['value'] == 1.0  # tie: default wins
    assert common.select_best(sweep, default=3.0)['value'] == 0.3  # tie: first in grid order
    assert common.mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))


def test_forgetting_cli_errors() -> None:
    proc = run(FORGETTING, '--upstream-classes', '0', '1', '--downstream-classes', '1', '2')
    assert proc.returncode == 2 and 'overlap: [1]' in proc.stderr
    proc = run(FORGETTING, '--help')
    assert proc.returncode == 0
    for flag in ('--seeds', '--epochs', '--quick', '--out-dir', '--no-sweep'):
        assert flag in proc.stdout


def test_scratch_table_and_json(scratch_out: Path) -> None:
    markdown = (scratch_out / 'results.md').read_text()
    rows = table_rows(markdown, '| method | setting |')
    assert rows[0] == ['method', 'setting', 'test acc (%)', 'Δ test vs no decay (pts)',
                       'val acc (%)', 'train acc (%)']
    body = rows[2:]
    assert len(body) == len(SCRATCH_METHODS)
    for needle in ('no decay', 'AdamW', 'DualOpt scratch', 'reverse=True'):
        assert any(needle in r[0] for r in body), needle
    for row in body:
        assert all(PM.match(cell) for cell in row[2:]), row
    assert body[0][3] == '0.00 ± 0.00'

    result = json.loads((scratch_out / 'results.json').read_text())
    assert {'config', 'command', 'environment', 'methods', 'wall_time_s'} <= set(result)
    assert list(result['methods']) == SCRATCH_METHODS
    for key, method in result['methods'].items():
        for which in ('default', 'selected'):
            assert_summary(method[which], ['val', 'test', 'train'], 2)
            assert all(0 <= v <= 100 for v in method[which]['test']['values']), key
            norms = method[which]['weight_norm']
            assert list(norms) == ['conv1', 'conv2', 'conv3', 'conv4', 'fc', 'head']
            assert all(math.isfinite(v) and v > 0 for v in norms.values())


def test_scratch_help() -> None:
    proc = run(SCRATCH, '--help')
    assert proc.returncode == 0
    for flag in ('--seeds', '--epochs', '--quick', '--out-dir', '--train-per-class'):
        assert flag in proc.stdout


@pytest.mark.parametrize('name,script', [('forgetting', FORGETTING), ('scratch', SCRATCH)])
def test_docs_tables_are_the_rendered_committed_results(name, script) -> None:
    """docs/experiments.md's tables are the tool's rendering of the committed results file,
    which records what produced it (commit, versions, threads, BLAS) from a committed tree."""
    results = ROOT / 'docs' / 'results' / f'{name}.json'
    provenance = json.loads(results.read_text())['environment']['provenance']
    assert {'git_commit', 'versions', 'threads', 'blas'} <= set(provenance), provenance
    assert {'torch', 'numpy'} <= set(provenance['versions'])
    assert provenance['git_dirty'] is False, 'the committed results came from a modified tree'
    proc = run(script, '--render', str(results))
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / 'docs' / 'experiments.md').read_text()
    begin, end = f'<!-- {name}:begin -->', f'<!-- {name}:end -->'
    assert begin in page and end in page
    section = page.split(begin, 1)[1].split(end, 1)[0].strip('\n')
    assert section == proc.stdout.rstrip('\n')
