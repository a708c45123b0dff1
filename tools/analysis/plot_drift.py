#!/usr/bin/env python
"""Plot how far each layer drifted from its anchor θ_0, and the DualOpt level profile.

Drift of a block (the constructor's layer unit, e.g. ``backbone.layer1.0``) is
``‖θ − θ_0‖ / ‖θ_0‖`` over its tensors. Two sources:

``--log-dir``: an mmengine run with ``WeightRollbackHook``
    ``<log_dir>/vis_data/scalars.json`` holds one JSON object per logged iteration; the hook's
    scalars appear as ``drift/<block>`` and ``drift/all`` next to ``iter`` (or ``step``).
    ``<log_dir>/dualopt_levels.json`` is a list of ``{"name", "block", "layer_id",
    "num_layers", "level", "lr", "weight_decay", "mode"}``, one entry per tensor.
    Drawn: drift vs iteration, one curve per block coloured by depth (``drift/all`` dashed
    black), and the level ``k_i`` of every tensor vs its layer index. A work directory is
    accepted too: its newest ``<timestamp>/vis_data/scalars.json`` is used.
``--drift``: the ``drift.json`` written by ``projects/experiments/forgetting.py``
    Drawn: final drift per layer, one line (with ± std band) per method; with
    ``--relative-to finetune`` also each method's drift divided by that method's, per layer.

All requested panels go into one PNG (matplotlib, Agg backend)::

    python tools/analysis/plot_drift.py --log-dir work_dirs/my_run/20250101_120000 --out drift.png
    python tools/analysis/plot_drift.py --drift work_dirs/forgetting/drift.json --out drift.png
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

DRIFT_PREFIXES = ('drift/', 'train/drift/')
LEVEL_KEYS = ('name', 'block', 'layer_id', 'num_layers', 'level')


# ----------------------------------------------------------------------------------------------
# reading


def find_log_files(path: str) -> Tuple[Optional[str], Optional[str]]:
    """Locate ``scalars.json`` and ``dualopt_levels.json`` for a log dir, work dir or file.

    Returns:
        ``(scalars_path, levels_path)``, each None when absent.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'no such file or directory: {path}')
    if os.path.isfile(path):  # a scalars.json given directly: log_dir is two levels up
        log_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        levels = os.path.join(log_dir, 'dualopt_levels.json')
        return path, levels if os.path.isfile(levels) else None
    scalars = os.path.join(path, 'vis_data', 'scalars.json')
    levels = os.path.join(path, 'dualopt_levels.json')
    if not os.path.isfile(scalars) and not os.path.isfile(levels):
        # a work dir: mmengine writes one <timestamp>/ log dir per run; take the newest
        candidates = sorted(glob.glob(os.path.join(path, '*', 'vis_data', 'scalars.json')),
                            key=os.path.getmtime)
        if candidates:
            return find_log_files(os.path.dirname(os.path.dirname(candidates[-1])))
    return (scalars if os.path.isfile(scalars) else None,
            levels if os.path.isfile(levels) else None)


def read_drift_scalars(path: str) -> Tuple[Dict[str, List[Tuple[float, float]]], str]:
    """Read ``drift/*`` series from an mmengine ``scalars.json``.

    Returns:
        ``({block or 'all': [(iteration, drift), ...]}, x_key)`` where ``x_key`` is the
        x-axis key used (``iter`` when the lines carry it, else ``step``).

    Raises:
        ValueError: a line is not JSON, or no line has a ``drift/`` key.
    """
    series: Dict[str, List[Tuple[float, float]]] = {}
    x_key = 'iter'
    with open(path, encoding='utf-8') as f:
        records = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{lineno}: not a JSON object ({error.msg})') from error
    if records and not any('iter' in r for r in records):
        x_key = 'step'
    for fallback_x, record in enumerate(records):
        x = record.get(x_key, record.get('step', fallback_x))
        for key, value in record.items():
            for prefix in DRIFT_PREFIXES:
                if key.startswith(prefix) and isinstance(value, (int, float)):
                    series.setdefault(key[len(prefix):], []).append((float(x), float(value)))
                    break
    if not series:
        raise ValueError(f'{path}: no "drift/..." scalars (is WeightRollbackHook in the config, '
                         'and did the run log at least one interval?)')
    for points in series.values():
        points.sort()
    return series, x_key


def read_levels(path: str) -> List[Dict[str, Any]]:
    """Read ``dualopt_levels.json`` (a list of per-tensor dicts).

    Raises:
        ValueError: not a list of objects with the keys name, block, layer_id, num_layers, level
            (the last three may be null for tensors that are not reviewed).
    """
    with open(path, encoding='utf-8') as f:
        entries = json.load(f)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f'{path}: expected a JSON list of objects')
    for i, entry in enumerate(entries):
        missing = [k for k in LEVEL_KEYS if k not in entry]
        if missing:
            raise ValueError(f'{path}: entry {i} lacks {missing}')
    return entries


def read_forgetting_drift(path: str) -> Dict[str, Any]:
    """Read ``drift.json`` from ``forgetting.py`` (``layers`` and ``methods`` → mean/std).

    Raises:
        ValueError: the keys ``layers``/``methods`` are missing or lengths disagree.
    """
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    if not isinstance(data, dict) or 'layers' not in data or 'methods' not in data:
        raise ValueError(f'{path}: expected an object with "layers" and "methods" '
                         '(the drift.json of projects/experiments/forgetting.py)')
    n = len(data['layers'])
    for key, method in data['methods'].items():
        if len(method.get('mean', [])) != n:
            raise ValueError(f'{path}: method {key!r} has {len(method.get("mean", []))} drift '
                             f'values for {n} layers')
    return data


# ----------------------------------------------------------------------------------------------
# drawing


def reviewed(levels: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The entries that carry a layer index and a level (the hook writes ``None`` for tensors
    it does not review: ``mode='none'`` groups such as new heads, skipped 1-d tensors)."""
    return [e for e in levels
            if e['layer_id'] is not None and e['num_layers'] is not None and e['level'] is not None]


def block_depths(series_names: Sequence[str],
                 levels: Optional[List[Dict[str, Any]]]) -> Dict[str, float]:
    """Relative depth in [0, 1] of every block: from the levels file, else from logging order."""
    depth: Dict[str, float] = {}
    if levels:
        for entry in reviewed(levels):
            n = max(int(entry['num_layers']) - 1, 1)
            depth.setdefault(str(entry['block']), int(entry['layer_id']) / n)
    unknown = [b for b in series_names if b != 'all' and b not in depth]
    for i, block in enumerate(unknown):
        depth[block] = i / max(len(unknown) - 1, 1)
    return depth


def plot_curves(ax: Any, series: Dict[str, List[Tuple[float, float]]], x_key: str,
                depth: Dict[str, float], cmap: Any) -> None:
    """Drift vs iteration, one curve per block coloured by depth; ``all`` dashed black."""
    blocks = sorted((b for b in series if b != 'all'), key=lambda b: (depth.get(b, 0.0), b))
    for block in blocks:
        xs, ys = zip(*series[block])
        ax.plot(xs, ys, color=cmap(depth.get(block, 0.0)), lw=1.2,
                label=block if len(blocks) <= 12 else None)
    if 'all' in series:
        xs, ys = zip(*series['all'])
        ax.plot(xs, ys, 'k--', lw=1.8, label='all')
    ax.set_xlabel(x_key)
    ax.set_ylabel('‖θ − θ₀‖ / ‖θ₀‖')
    ax.set_title('drift from θ₀ per block')
    ax.grid(alpha=0.3)
    if len(blocks) <= 12:
        ax.legend(fontsize=7, ncol=2 if len(blocks) > 6 else 1)
    else:
        _depth_colorbar(ax, cmap)


def plot_levels(ax: Any, levels: List[Dict[str, Any]], cmap: Any) -> None:
    """Level k_i of every reviewed tensor vs its layer index, coloured by depth."""
    skipped = len(levels) - len(reviewed(levels))
    levels = reviewed(levels)
    modes = sorted({str(e.get('mode', '?')) for e in levels})
    xs = [int(e['layer_id']) for e in levels]
    ys = [float(e['level']) for e in levels]
    n = max(max(int(e['num_layers']) for e in levels) - 1, 1)
    ax.scatter(xs, ys, c=[cmap(x / n) for x in xs], s=18, zorder=3)
    by_layer: Dict[int, float] = {}
    for x, y in zip(xs, ys):
        by_layer.setdefault(x, y)
    layer_ids = sorted(by_layer)
    ax.step(layer_ids, [by_layer[i] for i in layer_ids], where='mid', color='0.6', lw=1, zorder=2)
    if skipped:
        ax.text(0.98, 0.95, f'{skipped} tensor(s) not reviewed', transform=ax.transAxes,
                ha='right', va='top', fontsize=7, color='0.4')
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('layer index i (0 = shallowest)')
    ax.set_ylabel('level k_i')
    ax.set_title(f'DualOpt level profile (mode: {", ".join(modes)})')
    ax.grid(alpha=0.3)


def plot_method_drift(ax: Any, data: Dict[str, Any], relative_to: Optional[str] = None) -> None:
    """Final drift per layer for each method of the forgetting experiment (± std band).

    With ``relative_to`` (a method key), every method's mean drift is divided by that method's,
    layer by layer: the picture of how much each layer is held back (no band).
    """
    layers = [str(name).split('.', 1)[-1] for name in data['layers']]
    xs = list(range(len(layers)))
    markers = 'osD^vP*X'
    ref = None
    if relative_to is not None:
        ref = [float(v) for v in data['methods'][relative_to]['mean']]
    for k, (key, method) in enumerate(data['methods'].items()):
        mean = [float(v) for v in method['mean']]
        std = [float(v) for v in method.get('std', [0.0] * len(mean))]
        label = method.get('label', key)
        if method.get('setting'):
            label = f"{label}, {method['setting']}"
        if ref is not None:
            mean = [m / r if r > 0 else float('nan') for m, r in zip(mean, ref)]
        line, = ax.plot(xs, mean, marker=markers[k % len(markers)], lw=1.5, label=label)
        if ref is None:
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=line.get_color(),
                            alpha=0.15)
    ax.set_xticks(xs)
    ax.set_xticklabels(layers)
    ax.set_xlabel('backbone layer (shallow → deep)')
    if ref is None:
        ax.set_ylabel('‖θ − θ₀‖ / ‖θ₀‖ after fine-tuning')
        ax.set_title('drift per layer by method (mean ± std over seeds)')
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc='best')
    else:
        ax.set_ylabel(f'drift / drift of {relative_to}')
        ax.set_title(f'drift relative to {relative_to} (mean over seeds)')
        ax.axhline(1.0, color='0.5', lw=0.8)
    ax.grid(alpha=0.3)


def _depth_colorbar(ax: Any, cmap: Any) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
    plt.colorbar(mappable, ax=ax, label='relative depth (0 = shallowest)')


def make_figure(log_dir: Optional[str], drift_json: Optional[str], out: str, dpi: int = 110,
                title: Optional[str] = None, relative_to: Optional[str] = None) -> List[str]:
    """Draw every available panel into ``out``; return the panel names drawn.

    ``relative_to`` (a method key of ``drift_json``) adds a panel of drift ratios to it.

    Raises:
        ValueError: nothing to draw (neither source given, or the log dir has neither file).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels: List[Tuple[str, Any]] = []
    levels = None
    if log_dir is not None:
        scalars_path, levels_path = find_log_files(log_dir)
        if scalars_path is None and levels_path is None:
            raise ValueError(f'{log_dir}: found neither vis_data/scalars.json nor '
                             'dualopt_levels.json')
        levels = read_levels(levels_path) if levels_path else None
        if scalars_path is not None:
            series, x_key = read_drift_scalars(scalars_path)
            panels.append(('curves', (series, x_key)))
        else:
            print(f'warning: {log_dir}: no vis_data/scalars.json, drawing levels only',
                  file=sys.stderr)
        if levels and reviewed(levels):
            panels.append(('levels', levels))
        elif levels:
            print(f'warning: {levels_path}: no reviewed tensor (every layer_id is null), '
                  'no level panel', file=sys.stderr)
        elif levels_path is None:
            print(f'warning: {log_dir}: no dualopt_levels.json, drawing drift curves only',
                  file=sys.stderr)
    if drift_json is not None:
        data = read_forgetting_drift(drift_json)
        panels.append(('methods', data))
        if relative_to is not None:
            if relative_to not in data['methods']:
                raise ValueError(f'{drift_json}: --relative-to {relative_to!r} is not one of '
                                 f'the methods {list(data["methods"])}')
            panels.append(('relative', (data, relative_to)))
    if not panels:
        raise ValueError('nothing to plot: give --log-dir and/or --drift')

    cmap = plt.get_cmap('viridis')
    widths = [{'curves': 1.5, 'levels': 1.2, 'methods': 1.6, 'relative': 1.1}[name]
              for name, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) * 4.2, 3.8), squeeze=False,
                             gridspec_kw={'width_ratios': widths})
    for ax, (name, payload) in zip(axes[0], panels):
        if name == 'curves':
            series, x_key = payload
            plot_curves(ax, series, x_key, block_depths(list(series), levels), cmap)
        elif name == 'levels':
            plot_levels(ax, payload, cmap)
        elif name == 'methods':
            plot_method_drift(ax, payload)
        else:
            plot_method_drift(ax, *payload)
    if title:
        fig.suptitle('\n'.join(textwrap.wrap(title, width=int(sum(widths) * 45))), fontsize=10)
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return [name for name, _ in panels]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line interface (``--help``)."""
    parser = argparse.ArgumentParser(
        description='Plot per-layer drift ‖θ−θ₀‖/‖θ₀‖ from an mmengine run with '
                    'WeightRollbackHook (curves + level profile) and/or the per-method drift '
                    'of projects/experiments/forgetting.py, into one PNG.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--log-dir', help='mmengine log dir (<work_dir>/<timestamp>), a work '
                        'dir (newest run), or a scalars.json file')
    parser.add_argument('--drift', help="drift.json written by forgetting.py")
    parser.add_argument('--relative-to', default=None, metavar='METHOD',
                        help='with --drift: add a panel of each method\'s drift divided by this '
                             'method\'s, per layer (e.g. finetune)')
    parser.add_argument('--out', default=None,
                        help='output PNG (default: drift.png in the log dir, else ./drift.png)')
    parser.add_argument('--dpi', type=int, default=110)
    parser.add_argument('--title', default=None, help='figure title')
    args = parser.parse_args(argv)
    if args.log_dir is None and args.drift is None:
        parser.error('give --log-dir and/or --drift')
    if args.relative_to is not None and args.drift is None:
        parser.error('--relative-to needs --drift')
    if args.out is None:
        base = args.log_dir if args.log_dir and os.path.isdir(args.log_dir) else '.'
        args.out = os.path.join(base, 'drift.png')
    if not args.out.lower().endswith('.png'):
        parser.error(f'--out must be a .png file, got {args.out}')
    if args.dpi < 10 or not math.isfinite(args.dpi):
        parser.error(f'--dpi must be >= 10, got {args.dpi}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        panels = make_figure(args.log_dir, args.drift, args.out, args.dpi, args.title,
                             args.relative_to)
    except (OSError, ValueError) as error:
        print(f'plot_drift: error: {error}', file=sys.stderr)
        return 1
    print(f'wrote {args.out} ({", ".join(panels)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
