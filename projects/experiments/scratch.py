#!/usr/bin/env python
"""From-scratch experiment: DualOpt's layer-wise real-time weight decay vs AdamW vs no decay.

Task: all ten classes of scikit-learn's bundled digits set with few labelled images per class
(default 20), so that regularisation matters; the rest of each class is validation (for
hyper-parameter selection) and test. Model: the five-layer CNN of ``common.py`` plus a linear
head, trained from random initialisation with Adam at the same learning rate, cosine schedule,
number of steps, batch order and seeds for every method:

``no_decay``
    torch ``Adam``, ``weight_decay=0``.
``adamw``
    torch ``AdamW``: decoupled decay ``θ ← θ − η_t·wd·θ`` of every weight matrix / kernel
    (biases exempt, as DualOpt's scratch default ``skip_1d=True``), the same for all layers.
``dualopt``
    ``DualOptAdam(mode='scratch', weight_decay=0)``: after each Adam step the real-time review
    ``θ ← (1 − λ_i) θ̂`` with ``λ_i = (η_t/η_base) k_i`` and ``k_i = k_max (1 − i/N)`` over the
    six layers (conv1 … fc, head; i = 0 shallowest … N = 5): shallow layers decay most, the
    head not at all.
``dualopt_reverse``
    the same with ``reverse=True`` (``k_i = k_max · i/N``: the head decays most).

Fair tuning: the decaying methods sweep the same grid of per-step decay fractions ``f`` at the
base learning rate (AdamW ``wd = f/lr``; DualOpt ``k_max = f`` for its most-decayed layer, so its
*average* decay is about f/2); the value with the best mean validation accuracy is reported,
next to the untuned default (f = 1e-3) and the whole sweep. ``no_decay`` has no knob (one run
per seed).

Example::

    python projects/experiments/scratch.py --out-dir work_dirs/scratch
    python projects/experiments/scratch.py --quick --out-dir /tmp/sq   # seconds, for tests

Outputs in ``--out-dir``: ``results.md`` (also printed) and ``results.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sibling module of this script)

METRICS = ('val', 'test', 'train')
METHOD_ORDER = ('no_decay', 'adamw', 'dualopt', 'dualopt_reverse')


@dataclass
class Method:
    """A training method: its optimizer for one value of its knob."""

    key: str
    label: str
    knob: str
    default: float
    grid: Sequence[float]
    build: Callable[[common.Classifier, float, float], torch.optim.Optimizer]


def layers_of(model: common.Classifier) -> List[torch.nn.Module]:
    """The backbone's layers then the head, shallowest first (the DualOpt layer index)."""
    return [module for _, module in model.backbone.blocks()] + [model.head]


def build_no_decay(model: common.Classifier, lr: float, value: float) -> torch.optim.Optimizer:
    """Adam without any weight decay."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)


def build_adamw(model: common.Classifier, lr: float, value: float) -> torch.optim.Optimizer:
    """AdamW with per-step decay fraction ``value`` at base lr (wd = value/lr); biases exempt."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{'params': weights, 'weight_decay': value / lr},
                              {'params': biases, 'weight_decay': 0.0}], lr=lr)


def _build_dualopt(model: common.Classifier, lr: float, value: float,
                   reverse: bool) -> torch.optim.Optimizer:
    optim = common.import_dualopt()
    layers = layers_of(model)
    groups = [{'params': list(m.parameters()), 'layer_id': i, 'num_layers': len(layers)}
              for i, m in enumerate(layers)]
    return optim.DualOptAdam(groups, lr=lr, weight_decay=0.0, mode='scratch', k_max=value,
                             k_min=0.0, gamma=1.0, k_unit='base_lr', reverse=reverse,
                             skip_1d=True)


def build_dualopt(model: common.Classifier, lr: float, value: float) -> torch.optim.Optimizer:
    """DualOptAdam scratch mode, shallowest layer decays ``value`` per step at base lr."""
    return _build_dualopt(model, lr, value, reverse=False)


def build_dualopt_reverse(model: common.Classifier, lr: float,
                          value: float) -> torch.optim.Optimizer:
    """DualOptAdam scratch mode with the ramp reversed (the head decays most)."""
    return _build_dualopt(model, lr, value, reverse=True)


def make_methods(quick: bool) -> Dict[str, Method]:
    """The methods with their default and sweep grid of the per-step decay fraction f."""
    grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    methods = [
        Method('no_decay', 'no decay (Adam)', '—', 0.0, [0.0], build_no_decay),
        Method('adamw', 'AdamW (uniform decoupled decay)', 'f=lr·wd', 1e-3, grid, build_adamw),
        Method('dualopt', 'DualOpt scratch (DualOptAdam, shallow decays most)', 'f=k_max', 1e-3,
               grid, build_dualopt),
        Method('dualopt_reverse', 'DualOpt scratch, reverse=True (deep decays most)', 'f=k_max',
               1e-3, grid, build_dualopt_reverse),
    ]
    if quick:
        for m in methods:
            m.grid = [m.default]
    return {m.key: m for m in methods}


def run_one(seed: int, splits: Dict[str, common.Split], method: Method, value: float,
            args: argparse.Namespace) -> Dict[str, Any]:
    """Train from scratch once; return accuracies and per-layer weight norms."""
    generator = common.seed_everything(seed)  # same init and batch order for every method
    model = common.Classifier(10, args.width, args.feat_dim)
    optimizer = method.build(model, args.lr, value)
    common.train(model, optimizer, splits['train'], args.epochs, args.batch_size, generator)
    names = [n for n, _ in model.backbone.blocks()] + ['head']
    norms = {name: float(torch.linalg.vector_norm(torch.cat(
        [p.detach().flatten() for p in module.parameters()])))
        for name, module in zip(names, layers_of(model))}
    return {'val': common.accuracy(model, splits['val']),
            'test': common.accuracy(model, splits['test']),
            'train': common.accuracy(model, splits['train']),
            'weight_norm': norms}


def make_splits(seed: int, args: argparse.Namespace) -> Dict[str, common.Split]:
    """Per-class split of the ten digit classes into train / val / test for ``seed``."""
    images, labels = common.load_digits_arrays()
    rng = np.random.RandomState(seed)
    classes = list(range(10))
    train, val, test = common.split_per_class(
        labels, classes, [args.train_per_class, args.val_per_class, None], rng)
    return {'train': common.make_split(images, labels, train, classes),
            'val': common.make_split(images, labels, val, classes),
            'test': common.make_split(images, labels, test, classes)}


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean, std and per-seed values of every metric, and mean weight norm per layer."""
    out: Dict[str, Any] = {}
    for metric in METRICS:
        values = [r[metric] for r in runs]
        mean, std = common.mean_std(values)
        out[metric] = {'mean': mean, 'std': std, 'values': values}
    out['weight_norm'] = {name: common.mean_std(r['weight_norm'][name] for r in runs)[0]
                          for name in runs[0]['weight_norm']}
    return out


def render_markdown(result: Dict[str, Any]) -> str:
    """The results document."""
    cfg = result['config']
    lines = ['# From-scratch experiment (dualopt_mm, small scale, CPU)', '',
             f"Command: `{result['command']}`  ",
             f"Wall time: {result['wall_time_s']:.0f} s on {cfg['threads']} CPU thread(s); "
             f"seeds {cfg['seeds']}; mean ± std (ddof=1) over seeds.", '',
             f"Task: digits 0-9, {cfg['train_per_class']} train + {cfg['val_per_class']} "
             f"validation images per class, the rest test. Every method: {cfg['epochs']} epochs "
             f"= {cfg['steps']} steps, batch {cfg['batch_size']}, Adam(W) lr {cfg['lr']:g}, "
             'cosine to 0, same initialisation and batch order per seed.', '']
    has_sweep = any(len(m['sweep']) > 1 for m in result['methods'].values())
    header = ['method', 'setting', 'test acc (%)', 'Δ test vs no decay (pts)', 'val acc (%)',
              'train acc (%)']
    base = result['methods'].get('no_decay')
    baseline = base['default']['test']['values'] if base else None

    def row(m: Dict[str, Any], which: str) -> List[str]:
        s = m[which]
        setting = (m['knob'] if m['key'] == 'no_decay'
                   else f"{m['knob']}={common.fmt_value(m[f'{which}_value'])}")
        return [m['label'], setting, common.fmt_pm(s['test']['mean'], s['test']['std']),
                common.paired_delta(s['test']['values'], baseline),
                common.fmt_pm(s['val']['mean'], s['val']['std']),
                common.fmt_pm(s['train']['mean'], s['train']['std'])]

    if has_sweep:
        lines += ['## Each method tuned on validation (same grid of f)', '',
                  common.markdown_table(header, [row(m, 'selected')
                                                 for m in result['methods'].values()]), '']
    lines += ['## Default hyper-parameters (f = 1e-3, no tuning)', '',
              common.markdown_table(header, [row(m, 'default')
                                             for m in result['methods'].values()]), '']
    if has_sweep:
        rows = []
        for m in result['methods'].values():
            for entry in m['sweep']:
                s = entry['summary']
                setting = (m['knob'] if m['key'] == 'no_decay'
                           else f"{m['knob']}={common.fmt_value(entry['value'])}")
                rows.append([m['key'], setting,
                             common.fmt_pm(s['test']['mean'], s['test']['std']),
                             common.paired_delta(s['test']['values'], baseline),
                             common.fmt_pm(s['val']['mean'], s['val']['std']),
                             common.fmt_pm(s['train']['mean'], s['train']['std'])])
        lines += ['## Sweep (every grid value)', '', common.markdown_table(header, rows), '']
    which = 'selected' if has_sweep else 'default'
    names = list(next(iter(result['methods'].values()))[which]['weight_norm'])
    rows = [[m['key']] + [f"{m[which]['weight_norm'][n]:.2f}" for n in names]
            for m in result['methods'].values()]
    lines += ['Δ: test accuracy minus that of no decay, seed by seed (paired: same split, '
              'init and batches), mean ± std.', '']
    lines += [f'## Weight norm ‖θ‖ per layer ({which} settings, mean over seeds)', '',
              common.markdown_table(['method'] + names, rows), '']
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line interface (``--help``)."""
    parser = argparse.ArgumentParser(
        description='Train a small CNN from scratch on few-shot digits (10 classes) with no '
                    'decay, AdamW decay and DualOpt layer-wise real-time decay; report test '
                    'accuracy (mean ± std over seeds).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_output_arguments(parser, 'work_dirs/scratch')
    parser.add_argument('--epochs', type=int, default=60)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--train-per-class', type=int, default=20)
    parser.add_argument('--val-per-class', type=int, default=20)
    common.add_run_arguments(parser, METHOD_ORDER)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:2]
        args.epochs = min(args.epochs, 3)
        args.no_sweep = True
    if min(args.epochs, args.batch_size, args.threads, args.train_per_class,
           args.val_per_class) < 1:
        parser.error('--epochs, --batch-size, --threads, --train-per-class and '
                     '--val-per-class must be >= 1')
    if not args.lr > 0:
        parser.error(f'--lr must be > 0, got {args.lr}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; write and return the results."""
    args = parse_args(argv)
    if args.render:
        common.render_results(args.render, render_markdown, 'scratch', args.update_doc)
        return {}
    start = time.time()
    methods = common.prepare_run(args, make_methods(args.quick))
    total = len(args.seeds) * sum(len(m.grid) for m in methods.values())
    progress = common.Progress(total, 'scratch', enabled=not args.no_progress)
    runs: List[Dict[str, Any]] = []
    for seed in args.seeds:
        splits = make_splits(seed, args)
        for m in methods.values():
            for value in m.grid:
                run = run_one(seed, splits, m, value, args)
                run.update(method=m.key, value=value, seed=seed)
                runs.append(run)
                progress.update(f'seed {seed} {m.key} {common.fmt_value(value)}')
    progress.close()

    config = {k: v for k, v in vars(args).items() if k != 'no_progress'}
    config['steps'] = args.epochs * common.steps_per_epoch(10 * args.train_per_class,
                                                           args.batch_size)
    result: Dict[str, Any] = {'config': config, 'command': common.command_line(),
                              'environment': common.environment_info(args.threads),
                              'methods': {}}
    for m in methods.values():
        result['methods'][m.key] = common.method_result(m, runs, summarize, metric='val')
    result['wall_time_s'] = time.time() - start
    markdown = render_markdown(result)
    common.write_results(args.out_dir, markdown, result)
    print(f"wrote {args.out_dir}/results.md, results.json ({result['wall_time_s']:.1f} s)",
          file=sys.stderr)
    return result


if __name__ == '__main__':
    main()
