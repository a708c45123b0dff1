"""The tables, the README summary and the drift plot of ``real_finetune.py``'s results.

Rendering reads only a results file (``results.json``): the full tables are
docs/experiments.md's real-data section, the summary is the README's Results table. Δ columns
are paired: the mean of the seed-by-seed differences to ``stock`` with its 95 % Student-t
interval, the selection seeds stated beside them (disjoint from the evaluation seeds or not).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import provenance

TASK_TITLE = {
    'det': 'Tree-crown detection (Faster R-CNN Lite0-FPN, NEON)',
    'seg': 'Digit-scene segmentation (Semantic FPN Lite0, real images, generated layout)',
}
METHODS = ('stock', 'dualopt', 'dualopt_ref', 'l2sp')
METHOD_TITLE = {
    'stock': 'stock optimizer',
    'dualopt': 'DualOpt (one-line switch)',
    'dualopt_ref': 'DualOpt reference (Adam 1e-4)',
    'l2sp': 'L2-SP (stock + L2SPHook)',
}
KNOB = {'stock': 'weight_decay', 'dualopt': 'k_max', 'dualopt_ref': 'k_max*lr', 'l2sp': 'alpha'}
# metric keys: (key in a run's metrics, column title, scale to %)
TASK_METRICS = {
    'det': [('val', 'val AP', 100), ('test_in', 'AP in-domain', 100),
            ('test_in_50', 'AP50 in-domain', 100), ('test_cross', 'AP cross-site', 100),
            ('test_cross_50', 'AP50 cross-site', 100)],
    'seg': [('val', 'val mIoU', 1), ('test', 'mIoU in-domain', 1),
            ('test_shifted', 'mIoU other sites', 1)],
}
RETENTION_METRICS = [('imagenet_top1', 'ImageNet top-1 (20 img, old head)', 100),
                     ('agreement', 'agreement w/ pretrained (44 img)', 100),
                     ('feature_cos', 'feature cosine to pretrained', 1),
                     ('drift_all', 'backbone drift', 1)]
# the metrics with a paired Δ column, per task
PAIRED = {'det': ['test_in', 'test_cross'], 'seg': ['test', 'test_shifted']}


def find(runs: List[Dict], task: str, method: str, value: float, seed: int) -> Optional[Dict]:
    for r in runs:
        if (r['task'], r['method'], r['seed']) == (task, method, seed) and \
                math.isclose(r['value'], value, rel_tol=1e-9):
            return r
    return None


def fmt(values: Sequence[float], scale: float, digits: int = 1) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f'{vals[0]:.{digits}f}'
    return f'{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}'


def fmt_paired(differences: Sequence[float], scale: float) -> str:
    """Mean of paired differences and its 95 % interval (Student's t, n - 1 degrees of
    freedom): ``+1.6 [-1.1, 4.3]``; the interval excluding 0 is what "a difference" means."""
    from scipy.stats import t as student_t

    vals = [v * scale for v in differences]
    mean = statistics.mean(vals)
    if len(vals) < 2:
        return f'{mean:+.1f}'
    half = student_t.ppf(0.975, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return f'{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]'


def table(results: Dict[str, Any], task: str, tuned: bool,
          keys: Optional[Sequence[str]] = None) -> str:
    """Mean ± std over seeds per method, and paired deltas to ``stock``: the defaults, or
    (``tuned``) each method's knob selected on validation; ``keys``: only these metrics."""
    runs, settings = results['runs'], results['settings']
    seeds = settings['seeds']
    metrics = [m for m in TASK_METRICS[task] + RETENTION_METRICS if keys is None or m[0] in keys]
    deltas = PAIRED[task]
    titles = {k: t for k, t, _ in TASK_METRICS[task]}
    head = (['method', 'setting'] + [t for _, t, _ in metrics]
            + [f'Δ {titles[k]} vs stock [95 % CI]' for k in deltas])
    lines = ['| ' + ' | '.join(head) + ' |',
             '| :-- | --: |' + ' --: |' * (len(head) - 2)]
    values = {}
    for method in settings['methods']:
        if tuned:
            if method not in results['selection'][task]:   # partial results: not swept yet
                continue
            value = results['selection'][task][method]
        else:
            value = settings['defaults'][task][method]
        values[method] = value
    for method in values:
        rs = [find(runs, task, method, values[method], s) for s in seeds]
        if any(r is None for r in rs):
            continue
        cells = [METHOD_TITLE[method], f'{KNOB[method]}={values[method]:g}'
                 + (' (val)' if tuned else '')]
        for key, _, scale in metrics:
            cells.append(fmt([r['metrics'][key] for r in rs], scale,
                             {'drift_all': 4, 'feature_cos': 3}.get(key, 1)))
        base = [find(runs, task, 'stock', values.get('stock', 0), s) for s in seeds]
        for key in deltas:
            scale = dict((k, s) for k, _, s in TASK_METRICS[task])[key]
            if any(b is None for b in base) or method == 'stock':
                cells.append('—')
            else:
                cells.append(fmt_paired([r['metrics'][key] - b['metrics'][key]
                                         for r, b in zip(rs, base)], scale))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def drift_table(results: Dict[str, Any], task: str, tuned: bool = False) -> str:
    """Mean drift per backbone stage of each method at its default (``tuned``: selected)
    value."""
    runs, settings = results['runs'], results['settings']
    stages = ['stem'] + [f'stage{i}' for i in range(7)]
    lines = ['| method | ' + ' | '.join(stages) + ' |', '| :-- |' + ' --: |' * len(stages)]
    for method in settings['methods']:
        value = (results['selection'][task].get(method) if tuned
                 else settings['defaults'][task][method])
        if value is None:
            continue
        rs = [find(runs, task, method, value, s) for s in settings['seeds']]
        if any(r is None for r in rs):
            continue
        cells = [f'{statistics.mean(r["drift"][st] for r in rs):.4f}' for st in stages]
        lines.append(f'| {METHOD_TITLE[method]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def render(results: Dict[str, Any]) -> str:
    """The markdown tables of a results file (deterministic: the README embeds this text)."""
    s = results['settings']
    pre = results.get('pretrained') or {}
    out = [f"Seeds {', '.join(map(str, s['seeds']))}; "
           + '; '.join(f"{t}: {s['iters'][t]} iterations" for t in s['tasks'])
           + f"; {s['threads']} torch thread(s); wall time {results['wall_s'] / 60:.1f} min. "
           + "Pretrained Lite0 (no fine-tuning): ImageNet top-1 "
           + f"{pre.get('imagenet_top1', float('nan')) * 100:.0f} % on the 20 images.",
           '', f"Provenance: {provenance.describe(results['provenance'])}.",
           '', 'Δ columns: mean of the seed-by-seed differences to the stock optimizer and its '
           '95 % interval (paired t-test, n − 1 degrees of freedom).']
    for task in s['tasks']:
        tuned_only = s.get('tuned_only', False) and bool(results['selection'].get(task))
        if not tuned_only:
            out += ['', f'**{TASK_TITLE[task]}**, defaults (no tuning):', '',
                    table(results, task, False)]
        if results['selection'].get(task):
            out += ['', f'**{TASK_TITLE[task]}**, each knob selected on validation '
                    f'({sweep_phrase(s)}):', '', table(results, task, True)]
            out += ['', sweep_line(results, task)]
        which = 'selected values' if tuned_only else 'defaults'
        out += ['', f'Drift ‖θ − θ₀‖/‖θ₀‖ per backbone stage, {task}, {which} (mean over seeds):',
                '', drift_table(results, task, tuned_only)]
    return '\n'.join(out) + '\n'


def sweep_phrase(settings: Dict[str, Any]) -> str:
    """Where the knobs were selected, and whether those seeds are among the evaluated ones."""
    sweep = settings.get('sweep_seeds', [0])
    where = f"grid on seed(s) {', '.join(map(str, sweep))}"
    if set(sweep) & set(settings['seeds']):
        return where + ', among the evaluation seeds: not independent of the selection'
    return where + ', disjoint from the evaluation seeds'


def sweep_line(results: Dict[str, Any], task: str) -> str:
    """The validation metric of every grid value on the sweep seeds, per method."""
    s = results['settings']
    key, title, scale = TASK_METRICS[task][0]
    parts = []
    for method in s['methods']:
        cells = []
        for value in s['grids'][task][method]:
            rs = [find(results['runs'], task, method, value, seed) for seed in s['sweep_seeds']]
            if any(r is None for r in rs):
                break
            score = statistics.mean(r['metrics'][key] for r in rs) * scale
            cells.append(f'{value:g}: {score:.1f}')
        else:
            parts.append(f"{METHOD_TITLE[method]} ({KNOB[method]}) " + ', '.join(cells))
    return f'Sweep, {title} per grid value: ' + '; '.join(parts) + '.'


def render_summary(results: Dict[str, Any]) -> str:
    """The README's results tables: per task each method with its knob selected on
    validation, the test metrics and the paired differences to the stock optimizer with their
    95 % intervals (the defaults and everything else: ``render``)."""
    s = results['settings']
    out = [f"{len(s['seeds'])} seeds, mean ± std; Δ: paired difference to the stock optimizer "
           f"in points, mean [95 % paired-t interval]; knobs selected on validation "
           f"({sweep_phrase(s)}). Wall time "
           f"{results['wall_s'] / 60:.0f} min on {results['provenance']['cpu_count']} CPU "
           f"cores; {provenance.describe(results['provenance'])}."]
    for task in s['tasks']:
        keys = [k for k, _, _ in TASK_METRICS[task] if k in PAIRED[task]]
        tuned = bool(results['selection'].get(task))
        out += ['', f'**{TASK_TITLE[task]}**', '', table(results, task, tuned, keys)]
    return '\n'.join(out) + '\n'


def plot_drift(results: Dict[str, Any], path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = results['settings']
    stages = ['stem'] + [f'stage{i}' for i in range(7)]
    fig, axes = plt.subplots(1, len(s['tasks']), figsize=(5.5 * len(s['tasks']), 3.6),
                             squeeze=False)
    for ax, task in zip(axes[0], s['tasks']):
        for method in s['methods']:
            value = s['defaults'][task][method]
            rs = [find(results['runs'], task, method, value, sd) for sd in s['seeds']]
            if any(r is None for r in rs):
                continue
            ax.plot(range(len(stages)),
                    [statistics.mean(r['drift'][st] for r in rs) for st in stages],
                    marker='o', label=f'{METHOD_TITLE[method]} ({KNOB[method]}={value:g})')
        ax.set_xticks(range(len(stages)), stages, rotation=30)
        ax.set_ylabel('‖θ − θ₀‖ / ‖θ₀‖')
        ax.set_title(TASK_TITLE[task].split(' (')[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
