#!/usr/bin/env python
"""Fine-tuning forgetting experiment: does weight rollback keep the pretrained features?

A small CNN backbone is pretrained on an *upstream* task (digits 0-4 of scikit-learn's bundled
digits set) and fine-tuned on a *downstream* task (digits 5-9, few labelled samples per class,
a new linear head) with four methods, the same budget (optimizer steps, learning rate and
schedule, batch order) and the same seeds:

``finetune``
    plain full fine-tuning (torch ``AdamW``, or ``SGD`` with ``--base sgd``).
``l2sp``
    the same optimizer plus the L2-SP loss term ``α/2 · Σ_backbone ‖θ − θ_0‖²``.
``dualopt``
    ``DualOptAdamW`` (``DualOptSGD``), ``mode='finetune'``: after each step the review step
    ``θ ← θ̂ − λ_i (θ̂ − θ_0)`` with ``λ_i = (η_t/η_base) k_i`` and the depth ramp
    ``k_i = k_max (1 − i/N)`` over the five backbone layers (i = 0 shallowest … N = 4),
    one level per layer (weight and bias share it). The head is new: plain step.
``dualopt_ref``
    the reference-parity setting of the authors' AdamB: ``DualOptAdam(reference=True,
    k_unit='absolute', k_max=f/lr, weight_decay=0)`` (tensor-order index inside the backbone
    group, per-group step count).

Reported per method (mean ± std over seeds): downstream test accuracy; upstream accuracy that
survives fine-tuning, measured by re-fitting a linear probe (logistic regression) on the
upstream training set with the *frozen fine-tuned* backbone, compared with the same probe on
the pretrained backbone (forgetting = the difference, in points); upstream accuracy with the
old upstream head kept unchanged; and the drift ``‖θ − θ_0‖/‖θ_0‖`` of every backbone layer.

Fair tuning: every method gets the same number of runs on a grid of its own regularisation
knob (AdamW/SGD ``weight_decay`` for ``finetune``, ``α`` for ``l2sp``, the per-step rollback
fraction ``f`` of the shallowest layer at the base learning rate for both DualOpt methods).
The grid value is selected on a held-out downstream *validation* split (mean over seeds);
the test numbers of the selected value are the main table. The untuned defaults and the
whole sweep are reported too. ``--no-sweep`` runs the defaults only.

Example::

    python projects/experiments/forgetting.py --out-dir work_dirs/forgetting
    python projects/experiments/forgetting.py --quick --out-dir /tmp/fq   # seconds, for tests

Outputs in ``--out-dir``: ``results.md`` (also printed), ``results.json``, ``drift.csv`` (one
row per method, setting, seed and layer), ``drift.json`` / ``drift_default.json`` (per-layer
mean/std for the main table's / the default settings; ``tools/analysis/plot_drift.py --drift``
draws them) and ``tradeoff.png`` (downstream accuracy vs upstream retention over the sweep).
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sibling module of this script)

METRICS = ('down_val', 'down_test', 'up_probe', 'forgetting', 'up_old_head', 'drift_all')
METHOD_ORDER = ('finetune', 'l2sp', 'dualopt', 'dualopt_ref')


# ----------------------------------------------------------------------------------------------
# methods


@dataclass
class Method:
    """A fine-tuning method: how to build its optimizer (and extra loss) for one knob value."""

    key: str
    label: str
    knob: str
    default: float
    grid: Sequence[float]
    build: Callable[..., Tuple[torch.optim.Optimizer, Optional[Callable[[], torch.Tensor]]]]
    notes: str = ''


@dataclass
class RunSettings:
    """Hyper-parameters shared by all methods (the common budget)."""

    base: str = 'adamw'
    lr: float = 1e-3
    ref_lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9


def _base_optimizer(settings: RunSettings, params: Any,
                    weight_decay: float) -> torch.optim.Optimizer:
    if settings.base == 'adamw':
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                           weight_decay=weight_decay)


def build_finetune(model: common.Classifier, anchor: Dict[str, torch.Tensor],
                   settings: RunSettings, value: float):
    """Plain fine-tuning; ``value`` is the optimizer's ``weight_decay``."""
    return _base_optimizer(settings, model.parameters(), value), None


def build_l2sp(model: common.Classifier, anchor: Dict[str, torch.Tensor],
               settings: RunSettings, value: float):
    """Plain optimizer plus the loss ``value/2 · Σ_backbone ‖θ − θ_0‖²`` (L2-SP, Li et al. 2018)."""
    named = [(n, p) for n, p in model.named_parameters() if n.startswith('backbone.')]

    def penalty() -> torch.Tensor:
        return 0.5 * value * sum((p - anchor[n]).pow(2).sum() for n, p in named)

    return _base_optimizer(settings, model.parameters(), settings.weight_decay), penalty


def _block_groups(model: common.Classifier) -> List[Dict[str, Any]]:
    """One group per backbone layer with its global index, then the new head (not reviewed)."""
    blocks = model.backbone.blocks()
    groups: List[Dict[str, Any]] = [
        {'params': list(module.parameters()), 'layer_id': i, 'num_layers': len(blocks)}
        for i, (_, module) in enumerate(blocks)]
    groups.append({'params': list(model.head.parameters()), 'mode': 'none'})
    return groups


def build_dualopt(model: common.Classifier, anchor: Dict[str, torch.Tensor],
                  settings: RunSettings, value: float):
    """DualOptAdamW / DualOptSGD, ``mode='finetune'``, ``k_max=value`` (fraction at base lr)."""
    optim = common.import_dualopt()
    groups = _block_groups(model)
    if settings.base == 'adamw':
        opt = optim.DualOptAdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay,
                                 mode='finetune', k_max=value, k_min=0.0, gamma=1.0,
                                 k_unit='base_lr')
    else:
        opt = optim.DualOptSGD(groups, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay, mode='finetune', k_max=value,
                               k_min=0.0, gamma=1.0, k_unit='base_lr')
    return opt, None


def build_dualopt_ref(model: common.Classifier, anchor: Dict[str, torch.Tensor],
                      settings: RunSettings, value: float):
    """The authors' AdamB setting: Adam, weight_decay 0, ``k_max = value / lr`` (absolute k)."""
    optim = common.import_dualopt()
    groups = [{'params': list(model.backbone.parameters())},
              {'params': list(model.head.parameters()), 'mode': 'none'}]
    opt = optim.DualOptAdam(groups, lr=settings.ref_lr, weight_decay=0.0, mode='finetune',
                            reference=True, k_unit='absolute', k_max=value / settings.ref_lr,
                            k_min=0.0, gamma=1.0)
    return opt, None


def make_methods(base: str, quick: bool) -> Dict[str, Method]:
    """The four methods with their default knob value and sweep grid."""
    base_name = 'AdamW' if base == 'adamw' else 'SGD'
    wd_default = 0.01 if base == 'adamw' else 5e-4
    wd_grid = [0.0, 1e-3, 1e-2, 1e-1, 1.0] if base == 'adamw' else [0.0, 5e-5, 5e-4, 5e-3, 5e-2]
    alpha_grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    frac_grid = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    dual_name = 'DualOptAdamW' if base == 'adamw' else 'DualOptSGD'
    methods = [
        Method('finetune', f'full fine-tuning ({base_name})', 'weight_decay', wd_default, wd_grid,
               build_finetune),
        Method('l2sp', f'L2-SP ({base_name} + α/2‖θ−θ₀‖²)', 'alpha', 0.01, alpha_grid,
               build_l2sp),
        Method('dualopt', f'DualOpt fine-tune ({dual_name})', 'k_max', 0.01, frac_grid,
               build_dualopt, notes="k_unit='base_lr': fraction rolled back per step at base lr"),
        Method('dualopt_ref', 'DualOpt reference (DualOptAdam, reference=True)', 'k_max*lr',
               0.01, frac_grid, build_dualopt_ref,
               notes="k_unit='absolute', k_max = value/lr, weight_decay 0"),
    ]
    if quick:
        for m in methods:
            m.grid = [m.default]
    return {m.key: m for m in methods}


# ----------------------------------------------------------------------------------------------
# one seed


@dataclass
class SeedData:
    """The four splits of one seed."""

    up_train: common.Split
    up_test: common.Split
    down_train: common.Split
    down_val: common.Split
    down_test: common.Split


def make_seed_data(seed: int, args: argparse.Namespace) -> SeedData:
    """Split digits into upstream (``--upstream-classes``) and downstream tasks for ``seed``."""
    images, labels = common.load_digits_arrays()
    rng = np.random.RandomState(seed)
    up_cls, down_cls = args.upstream_classes, args.downstream_classes
    up_train, up_test = common.split_per_class(labels, up_cls, [args.up_train_per_class, None], rng)
    d_train, d_val, d_test = common.split_per_class(
        labels, down_cls, [args.down_train_per_class, args.down_val_per_class, None], rng)
    return SeedData(common.make_split(images, labels, up_train, up_cls),
                    common.make_split(images, labels, up_test, up_cls),
                    common.make_split(images, labels, d_train, down_cls),
                    common.make_split(images, labels, d_val, down_cls),
                    common.make_split(images, labels, d_test, down_cls))


def pretrain(seed: int, data: SeedData, args: argparse.Namespace) -> common.Classifier:
    """Train backbone + upstream head from scratch with Adam (cosine schedule)."""
    generator = common.seed_everything(seed)
    model = common.Classifier(len(args.upstream_classes), args.width, args.feat_dim)
    opt = torch.optim.Adam(model.parameters(), lr=args.pretrain_lr)
    common.train(model, opt, data.up_train, args.pretrain_epochs, args.batch_size, generator)
    return model


def finetune_run(seed: int, data: SeedData, pretrained: common.Classifier, method: Method,
                 value: float, settings: RunSettings, args: argparse.Namespace,
                 probe_pre: float) -> Dict[str, Any]:
    """Fine-tune a copy of the pretrained backbone with a new head; evaluate everything."""
    generator = common.seed_everything(10_000 + seed)  # same head init and batches for all methods
    model = common.Classifier(len(args.downstream_classes), args.width, args.feat_dim)
    model.backbone.load_state_dict(pretrained.backbone.state_dict())
    anchor = {f'backbone.{n}': p.detach().clone()
              for n, p in pretrained.backbone.named_parameters()}
    optimizer, extra_loss = method.build(model, anchor, settings, value)
    if hasattr(optimizer, 'capture_anchors'):
        optimizer.capture_anchors()  # θ_0 = the pretrained weights (they are loaded already)
    common.train(model, optimizer, data.down_train, args.epochs, args.batch_size, generator,
                 extra_loss=extra_loss)
    up_probe = common.linear_probe_accuracy(model.backbone, data.up_train, data.up_test)
    old_head = copy.deepcopy(pretrained)
    old_head.backbone.load_state_dict(model.backbone.state_dict())
    drift = common.layer_drift(model, anchor)
    return {
        'down_val': common.accuracy(model, data.down_val),
        'down_test': common.accuracy(model, data.down_test),
        'up_probe': up_probe,
        'forgetting': probe_pre - up_probe,
        'up_old_head': common.accuracy(old_head, data.up_test),
        'drift_all': drift['all'],
        'drift': {k: v for k, v in drift.items() if k != 'all'},
    }


# ----------------------------------------------------------------------------------------------
# aggregation and reporting


def summarize(runs: List[Dict[str, Any]], layers: Sequence[str]) -> Dict[str, Any]:
    """Mean, std and per-seed values of every metric, plus per-layer drift."""
    out: Dict[str, Any] = {}
    for metric in METRICS:
        values = [r[metric] for r in runs]
        mean, std = common.mean_std(values)
        out[metric] = {'mean': mean, 'std': std, 'values': values}
    out['drift_per_layer'] = {}
    for layer in layers:
        mean, std = common.mean_std(r['drift'][layer] for r in runs)
        out['drift_per_layer'][layer] = {'mean': mean, 'std': std}
    return out


TABLE_HEADER = ['method', 'setting', 'downstream acc (%)', 'Δ downstream vs full FT (pts)',
                'upstream probe (%)', 'forgetting (pts)', 'upstream, old head (%)',
                'backbone drift']


def table_row(label: str, setting: str, s: Dict[str, Any],
              baseline: Optional[Sequence[float]]) -> List[str]:
    """One row of the results table from a summary (``baseline``: per-seed FT accuracies)."""
    return [label, setting, common.fmt_pm(s['down_test']['mean'], s['down_test']['std']),
            common.paired_delta(s['down_test']['values'], baseline),
            common.fmt_pm(s['up_probe']['mean'], s['up_probe']['std']),
            common.fmt_pm(s['forgetting']['mean'], s['forgetting']['std']),
            common.fmt_pm(s['up_old_head']['mean'], s['up_old_head']['std']),
            common.fmt_pm(s['drift_all']['mean'], s['drift_all']['std'], 3)]


def render_markdown(result: Dict[str, Any]) -> str:
    """The results document: setup, main table, defaults table, sweep, per-layer drift."""
    cfg = result['config']
    pre = result['pretrained']
    lines = ['# Forgetting experiment (dualopt_mm, small scale, CPU)', '',
             f"Command: `{result['command']}`  ",
             f"Wall time: {result['wall_time_s']:.0f} s on {cfg['threads']} CPU thread(s); "
             f"seeds {cfg['seeds']}; mean ± std (ddof=1) over seeds.", '',
             f"Upstream: digits {cfg['upstream_classes']} ({cfg['up_train_per_class']} train "
             f"images per class, the rest test), pretrained {cfg['pretrain_epochs']} epochs "
             f"(Adam, lr {cfg['pretrain_lr']:g}, cosine). Downstream: digits "
             f"{cfg['downstream_classes']}, {cfg['down_train_per_class']} train + "
             f"{cfg['down_val_per_class']} validation images per class, the rest test; new "
             f"linear head; every method {cfg['epochs']} epochs = {cfg['finetune_steps']} steps, "
             f"batch {cfg['batch_size']}, lr {cfg['lr']:g} (reference setting: "
             f"{cfg['ref_lr']:g}), cosine to 0.", '',
             f"Pretrained backbone: upstream test accuracy {common.fmt_pm(*pre['up_head'])} %, "
             f"upstream linear probe {common.fmt_pm(*pre['up_probe'])} %, downstream linear "
             f"probe on the frozen backbone {common.fmt_pm(*pre['down_probe'])} %.", '']
    has_sweep = any(len(m['sweep']) > 1 for m in result['methods'].values())

    def block(which: str, title: str) -> None:
        ft = result['methods'].get('finetune')
        baseline = ft[which]['down_test']['values'] if ft else None
        rows = [['pretrained backbone, frozen (linear probe)', '—',
                 common.fmt_pm(*pre['down_probe']),
                 common.paired_delta(result['pretrained_per_seed']['down_probe'], baseline),
                 common.fmt_pm(*pre['up_probe']), '0.00 ± 0.00', common.fmt_pm(*pre['up_head']),
                 '0.000 ± 0.000']]
        for m in result['methods'].values():
            value = m[f'{which}_value']
            rows.append(table_row(m['label'], f"{m['knob']}={common.fmt_value(value)}", m[which],
                                  baseline))
        lines.extend([f'## {title}', '', common.markdown_table(TABLE_HEADER, rows), ''])

    if has_sweep:
        block('selected', 'Each method tuned on downstream validation (same grid size)')
    block('default', 'Default hyper-parameters (no tuning)')
    lines += ['Columns: downstream test accuracy; Δ = that accuracy minus full fine-tuning\'s '
              'in the same table, seed by seed (paired: same split, init and batches), '
              'mean ± std; upstream test accuracy of a logistic-regression '
              'probe re-fitted on the frozen fine-tuned backbone; forgetting = pretrained probe '
              '− fine-tuned probe (points, lower is better); upstream accuracy with the old '
              'upstream head on the fine-tuned backbone; ‖θ−θ₀‖/‖θ₀‖ over the backbone.', '']
    if has_sweep:
        rows = []
        for m in result['methods'].values():
            for entry in m['sweep']:
                s = entry['summary']
                rows.append([m['key'], f"{m['knob']}={common.fmt_value(entry['value'])}",
                             common.fmt_pm(s['down_val']['mean'], s['down_val']['std']),
                             common.fmt_pm(s['down_test']['mean'], s['down_test']['std']),
                             common.fmt_pm(s['up_probe']['mean'], s['up_probe']['std']),
                             common.fmt_pm(s['up_old_head']['mean'], s['up_old_head']['std']),
                             common.fmt_pm(s['drift_all']['mean'], s['drift_all']['std'], 3)])
        lines += ['## Sweep (every grid value)', '',
                  common.markdown_table(['method', 'setting', 'downstream val (%)',
                                         'downstream test (%)', 'upstream probe (%)',
                                         'upstream, old head (%)', 'backbone drift'], rows), '']
    layers = result['layers']
    rows = []
    which = 'selected' if has_sweep else 'default'
    for m in result['methods'].values():
        per = m[which]['drift_per_layer']
        rows.append([m['key']] + [f"{per[layer]['mean']:.3f}" for layer in layers])
    lines += [f'## Drift ‖θ−θ₀‖/‖θ₀‖ per backbone layer ({which} settings, mean over seeds)',
              '', common.markdown_table(['method'] + [lay.split('.', 1)[1] for lay in layers],
                                        rows), '']
    return '\n'.join(lines)


def write_drift_files(out_dir: str, result: Dict[str, Any],
                      all_runs: List[Dict[str, Any]]) -> None:
    """Write ``drift.csv`` (every run), ``drift.json`` (main table) and ``drift_default.json``."""
    layers = result['layers']
    with open(os.path.join(out_dir, 'drift.csv'), 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['method', 'knob', 'value', 'seed', 'layer', 'layer_index', 'drift'])
        for run in all_runs:
            for i, layer in enumerate(layers):
                writer.writerow([run['method'], run['knob'], run['value'], run['seed'], layer, i,
                                 f"{run['drift'][layer]:.6g}"])
    has_sweep = any(len(m['sweep']) > 1 for m in result['methods'].values())
    for which, name in (('selected' if has_sweep else 'default', 'drift.json'),
                        ('default', 'drift_default.json')):
        methods = {}
        for m in result['methods'].values():
            per = m[which]['drift_per_layer']
            methods[m['key']] = {
                'label': m['label'],
                'setting': f"{m['knob']}={common.fmt_value(m[f'{which}_value'])}",
                'mean': [per[layer]['mean'] for layer in layers],
                'std': [per[layer]['std'] for layer in layers]}
        common.write_json(os.path.join(out_dir, name), {
            'source': 'projects/experiments/forgetting.py', 'settings': which,
            'metric': '||theta - theta_0|| / ||theta_0|| per backbone layer',
            'layers': layers, 'methods': methods})


def plot_tradeoff(path: str, result: Dict[str, Any]) -> bool:
    """Downstream accuracy vs upstream retention over each method's sweep, as a PNG.

    Two panels (upstream accuracy with the old head; re-fitted upstream probe), one line per
    method through its grid values, the frozen pretrained backbone as a star. Returns False
    (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        print('warning: matplotlib is not installed, no trade-off plot', file=sys.stderr)
        return False
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    pre = result['pretrained']
    for ax, metric, pre_key, ylabel in (
            (axes[0], 'up_old_head', 'up_head', 'upstream acc., old head (%)'),
            (axes[1], 'up_probe', 'up_probe', 'upstream acc., re-fitted probe (%)')):
        for k, m in enumerate(result['methods'].values()):
            xs = [e['summary']['down_test']['mean'] for e in m['sweep']]
            ys = [e['summary'][metric]['mean'] for e in m['sweep']]
            ax.plot(xs, ys, marker='osD^'[k % 4], lw=1.2, label=f"{m['key']} ({m['knob']})")
            for j in {0, len(xs) - 1}:  # label the ends of the grid only (the middle crowds)
                ax.annotate(common.fmt_value(m['sweep'][j]['value']), (xs[j], ys[j]),
                            fontsize=6, textcoords='offset points', xytext=(3, 3))
        ax.plot([pre['down_probe'][0]], [pre[pre_key][0]], 'k*', ms=10,
                label='frozen backbone (linear probe)')
        ax.set_xlabel('downstream test acc. (%)')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle('fine-tuning trade-off over each method\'s sweep (mean over seeds; '
                 'up-right is better)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line interface (``--help``)."""
    parser = argparse.ArgumentParser(
        description='Pretrain a small CNN on digits 0-4, fine-tune on digits 5-9 with full '
                    'fine-tuning, L2-SP, DualOpt and the DualOpt reference setting; report '
                    'downstream accuracy, upstream forgetting and per-layer drift.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_output_arguments(parser, 'work_dirs/forgetting')
    parser.add_argument('--epochs', type=int, default=40, help='fine-tuning epochs')
    parser.add_argument('--pretrain-epochs', type=int, default=30)
    parser.add_argument('--base', choices=['adamw', 'sgd'], default='adamw',
                        help='optimizer of full fine-tuning, L2-SP and DualOpt fine-tune mode')
    parser.add_argument('--lr', type=float, default=None,
                        help='fine-tuning lr (default 1e-3 for adamw, 0.03 for sgd)')
    parser.add_argument('--ref-lr', type=float, default=1e-3,
                        help='Adam lr of the reference setting (dualopt_ref)')
    parser.add_argument('--pretrain-lr', type=float, default=1e-3)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--up-train-per-class', type=int, default=100)
    parser.add_argument('--down-train-per-class', type=int, default=30,
                        help='labelled downstream images per class (few-shot fine-tuning)')
    parser.add_argument('--down-val-per-class', type=int, default=20,
                        help='downstream validation images per class (hyper-parameter selection)')
    parser.add_argument('--upstream-classes', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--downstream-classes', type=int, nargs='+', default=[5, 6, 7, 8, 9])
    common.add_run_arguments(parser, METHOD_ORDER)
    parser.add_argument('--no-plot', action='store_true', help='do not write tradeoff.png')
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:2]
        args.epochs = min(args.epochs, 3)
        args.pretrain_epochs = min(args.pretrain_epochs, 3)
        args.up_train_per_class = min(args.up_train_per_class, 40)
        args.no_sweep = True
    if args.lr is None:
        args.lr = 1e-3 if args.base == 'adamw' else 0.03
    overlap = set(args.upstream_classes) & set(args.downstream_classes)
    if overlap:
        parser.error(f'upstream and downstream classes overlap: {sorted(overlap)}')
    bad = [c for c in args.upstream_classes + args.downstream_classes if not 0 <= c <= 9]
    if bad:
        parser.error(f'digit classes must be in 0..9, got {bad}')
    if min(args.epochs, args.pretrain_epochs, args.batch_size, args.threads) < 1:
        parser.error('--epochs, --pretrain-epochs, --batch-size and --threads must be >= 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; write and return the results."""
    args = parse_args(argv)
    if args.render:
        common.render_results(args.render, render_markdown, 'forgetting', args.update_doc)
        return {}
    start = time.time()
    methods = common.prepare_run(args, make_methods(args.base, args.quick))
    settings = RunSettings(base=args.base, lr=args.lr, ref_lr=args.ref_lr,
                           weight_decay=0.01 if args.base == 'adamw' else 5e-4)
    layers = common.backbone_block_names(common.Classifier(1, args.width, args.feat_dim))

    total = len(args.seeds) * (1 + sum(len(m.grid) for m in methods.values()))
    progress = common.Progress(total, 'forgetting', enabled=not args.no_progress)
    pre_stats: Dict[str, List[float]] = {'up_head': [], 'up_probe': [], 'down_probe': []}
    all_runs: List[Dict[str, Any]] = []
    for seed in args.seeds:
        data = make_seed_data(seed, args)
        pretrained = pretrain(seed, data, args)
        probe_pre = common.linear_probe_accuracy(pretrained.backbone, data.up_train, data.up_test)
        pre_stats['up_head'].append(common.accuracy(pretrained, data.up_test))
        pre_stats['up_probe'].append(probe_pre)
        pre_stats['down_probe'].append(common.linear_probe_accuracy(
            pretrained.backbone, data.down_train, data.down_test))
        progress.update(f'seed {seed} pretrained')
        for m in methods.values():
            for value in m.grid:
                run = finetune_run(seed, data, pretrained, m, value, settings, args, probe_pre)
                run.update(method=m.key, knob=m.knob, value=value, seed=seed)
                all_runs.append(run)
                progress.update(f'seed {seed} {m.key} {m.knob}={common.fmt_value(value)}')
    progress.close()

    result: Dict[str, Any] = {
        'config': {k: v for k, v in vars(args).items() if k not in ('no_progress', 'no_plot')},
        'command': common.command_line(),
        'environment': common.environment_info(args.threads),
        'layers': layers,
        'pretrained': {k: list(common.mean_std(v)) for k, v in pre_stats.items()},
        'pretrained_per_seed': pre_stats,
        'methods': {},
    }
    n_down = args.down_train_per_class * len(args.downstream_classes)
    result['config']['finetune_steps'] = args.epochs * common.steps_per_epoch(n_down,
                                                                              args.batch_size)
    for m in methods.values():
        result['methods'][m.key] = common.method_result(
            m, all_runs, lambda runs: summarize(runs, layers), metric='down_val',
            fields=('key', 'label', 'knob', 'notes'))
    result['wall_time_s'] = time.time() - start

    markdown = render_markdown(result)
    common.write_results(args.out_dir, markdown, result)
    write_drift_files(args.out_dir, result, all_runs)
    written = 'results.md, results.json, drift.csv, drift.json, drift_default.json'
    if not args.no_plot and plot_tradeoff(os.path.join(args.out_dir, 'tradeoff.png'), result):
        written += ', tradeoff.png'
    print(f"wrote {args.out_dir}/: {written} ({result['wall_time_s']:.1f} s)", file=sys.stderr)
    return result


if __name__ == '__main__':
    main()
