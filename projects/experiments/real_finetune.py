#!/usr/bin/env python
"""Real-data fine-tuning benchmark: ImageNet-pretrained Lite0, detection and segmentation.

Does weight rollback keep the pretrained features when a real ImageNet backbone is fine-tuned
on a small dense-prediction task, and does that help in-domain or on shifted data? Everything
runs through the real mmengine ``Runner`` with the configs in ``configs/real/``:

``det``  Faster R-CNN Lite0-FPN on NEON tree crowns
         (``configs/real/faster-rcnn_lite0_fpn_neon-trees_*``):
         box AP on held-out Yellowstone tiles (in-domain) and on two other sites (cross-site).
``seg``  Semantic FPN Lite0 on real digits pasted on real aerial photos
         (``configs/real/fpn_lite0_digit-scenes_*``): mIoU in-domain and on other sites' photos.

Methods (same schedule, batches and seeds; each changes one thing of the baseline config):

``stock``        the config's optimizer (det: SGD, seg: AdamW); knob: ``weight_decay``.
``dualopt``      the DualOpt config (one-line switch, defaults: DualOptSGD / DualOptAdamW,
                 ``k_max=0.01``);
                 knob: ``k_max`` (per-step rollback fraction of the shallowest layer at the
                 base lr).
``dualopt_ref``  the reference-parity setting of the papers / authors' AdamB: ``DualOptAdam(
                 lr=1e-4, weight_decay=0, reference=True, k_unit='absolute', k_max=f/lr,
                 k_min=0, gamma=1)`` with mmengine's default constructor (one param group of
                 all parameters in model order, so the tensor-order index spans the whole model
                 as when the reference optimizer is given ``model.parameters()``); knob: ``f``.
``l2sp``         stock optimizer + ``L2SPHook(alpha)`` (gradient of ``α/2‖θ−θ_0‖²`` on the
                 backbone); knob: ``alpha``.

Reported per run: the task metrics; upstream retention, i.e. the fine-tuned backbone put back
under the original Lite0 ImageNet head (conv_head, bn2, classifier) and scored by top-1 on the
20 ImageNet images of foolbox and by top-1 agreement with the pretrained model on 44 held-out
real images (foolbox's CIFAR images, quadrants of NEON ``SOAP_031``), and the cosine
similarity of the backbone's pooled output to the pretrained one on those 64 images; the drift
``‖θ − θ_0‖/‖θ_0‖`` of every backbone block. Tables: mean ± std over seeds and paired
(seed-by-seed) deltas to ``stock``, for the defaults and for each method's knob selected on
the validation split (sweep on ``--sweep-seeds``, then the selected value on all seeds).

Runs are shared by ``--jobs`` worker processes (one torch thread each by default, so each run
is deterministic whichever worker takes it; CPU numerics pinned by ``numerics.py``, or the
machine's own with ``DUALOPT_NUMERICS=native``); the sweep's grid runs go first.

Outputs in ``--out-dir``: ``results.json`` (every run, provenance recorded at the start),
``results.md`` (tables), ``drift.png`` (per-block drift). ``--render results.json`` re-renders
the tables only: the full ones are docs/experiments.md's real-data section, the summary is the
README's Results table, both for ``docs/results/real_finetune.json`` (a test checks both);
the rendering lives in ``real_finetune_tables.py``.

Examples::

    python projects/experiments/real_finetune.py --out-dir work_dirs/real_finetune  # ~40 min
    python projects/experiments/real_finetune.py --quick --out-dir /tmp/rf      # ~1 minute
    python projects/experiments/real_finetune.py --render docs/results/real_finetune.json \\
        --plot docs/images/real_finetune_drift.png --update-doc docs/experiments.md \\
        --update-readme README.md
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'data'))
sys.path.insert(0, str(ROOT / 'projects' / 'experiments'))

import numerics  # noqa: E402

if __name__ in ('__main__', '__mp_main__'):   # the tool or its spawned worker: before torch
    numerics.pin()
import common  # noqa: E402
import provenance  # noqa: E402
from real_finetune_tables import (  # noqa: E402,F401
    KNOB,
    METHOD_TITLE,
    METHODS,
    PAIRED,
    RETENTION_METRICS,
    TASK_METRICS,
    TASK_TITLE,
    find,
    plot_drift,
    render,
    render_summary,
    sweep_phrase,
)

CONFIGS = {
    'det': ('configs/real/faster-rcnn_lite0_fpn_neon-trees_baseline.py',
            'configs/real/faster-rcnn_lite0_fpn_neon-trees_dualopt.py'),
    'seg': ('configs/real/fpn_lite0_digit-scenes_baseline.py',
            'configs/real/fpn_lite0_digit-scenes_dualopt.py'),
}
# (default, sweep grid) per task and method; the default is the config's / the paper's value,
# in the middle of a 5-point grid (two steps weaker, two stronger) as in the digits experiments
ROLLBACK_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
GRIDS = {
    'det': {'stock': (1e-4, (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)), 'dualopt': (0.01, ROLLBACK_GRID),
            'dualopt_ref': (0.01, ROLLBACK_GRID), 'l2sp': (0.01, (1e-3, 0.01, 0.1, 1.0, 10.0))},
    'seg': {'stock': (0.01, (1e-3, 0.01, 0.1, 1.0, 10.0)), 'dualopt': (0.01, ROLLBACK_GRID),
            'dualopt_ref': (0.01, ROLLBACK_GRID), 'l2sp': (0.01, (1e-3, 0.01, 0.1, 1.0, 10.0))},
}
REF_LR = 1e-4
# rendered tables live between '<!-- NAME:begin -->' and '<!-- NAME:end -->' of a page
DOC_SECTION, README_SECTION = 'real_finetune', 'real_finetune_summary'


def log(msg: str) -> None:
    print(f'[real_finetune {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ---------------------------------------------------------------------------------------- data


def prepare_data(data_dir: Path, quick: bool) -> Dict[str, Path]:
    """Convert the weights and data sets into ``data_dir`` unless already there."""
    import convert_lite0
    import convert_neon_trees
    import make_digit_scenes
    paths = {'lite0': data_dir / 'lite0' / 'tf_efficientnet_lite0_imagenet_mmengine.pth',
             'det': data_dir / 'neon_trees', 'seg': data_dir / 'digit_scenes'}
    if not paths['lite0'].is_file():
        log(f'converting the Lite0 weights -> {paths["lite0"]}')
        if convert_lite0.main(['--out', str(paths['lite0'])]) != 0:
            raise RuntimeError('the converted Lite0 weights failed the 17/20 ImageNet check')
    if not (paths['det'] / 'annotations' / 'test_cross.json').is_file():
        log(f'tiling the NEON tree crowns -> {paths["det"]}')
        convert_neon_trees.convert(paths['det'])
    if not (paths['seg'] / 'layout.json').is_file():
        log(f'building the digit scenes -> {paths["seg"]}')
        make_digit_scenes.main(['--out', str(paths['seg'])])
    return paths


# ------------------------------------------------------------------------------------- configs


def build_cfg(task: str, method: str, value: float, seed: int, args: argparse.Namespace,
              paths: Dict[str, Path], work_dir: Path):
    """The mmengine Config of one run: the task's baseline / DualOpt config plus the method."""
    from mmengine.config import Config
    baseline, dualopt = CONFIGS[task]
    cfg = Config.fromfile(str(ROOT / (dualopt if method == 'dualopt' else baseline)))
    data_root = str(paths[task]) + '/'
    cfg.model.backbone.init_cfg.checkpoint = str(paths['lite0'])
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = data_root
    if task == 'det':
        cfg.val_evaluator.ann_file = data_root + 'annotations/val.json'
        cfg.test_evaluator.ann_file = data_root + 'annotations/test_in.json'
    if args.quick:
        cfg.val_dataloader.dataset.indices = args.eval_images
        cfg.test_dataloader.dataset.indices = args.eval_images
    iters = args.iters[task]
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    warmup = max(1, iters // 10)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=iters, T_max=iters)]
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = max(1, iters // 5)
    cfg.log_level = 'WARNING'
    cfg.work_dir = str(work_dir)
    # the Runner's scope, logger and visualizer are process-wide, named by experiment and second
    cfg.experiment_name = work_dir.name
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
                       dist_cfg=dict(backend='gloo'))
    hooks = [h for h in cfg.custom_hooks if h['type'] != 'WeightRollbackHook']
    if method == 'stock':
        cfg.optim_wrapper.optimizer.weight_decay = value
    elif method == 'dualopt':
        cfg.optim_wrapper.paramwise_cfg = dict(dualopt=dict(k_max=value))
    elif method == 'dualopt_ref':
        cfg.optim_wrapper = dict(
            type='OptimWrapper', constructor='DefaultOptimWrapperConstructor',
            optimizer=dict(type='DualOptAdam', lr=REF_LR, betas=(0.9, 0.999), weight_decay=0.0,
                           reference=True, k_unit='absolute', k_max=value / REF_LR, k_min=0.0,
                           gamma=1.0))
    elif method == 'l2sp':
        hooks.append(dict(type='L2SPHook', alpha=value))
    else:
        raise ValueError(f'unknown method {method!r}')
    cfg.custom_hooks = hooks
    return cfg


# ----------------------------------------------------------------------------------- measuring


def block_of(name: str) -> Optional[Tuple[str, str]]:
    """(stage, block) of a backbone parameter name, e.g. ('stage3', 'blocks.3.1')."""
    m = re.match(r'backbone\.timm_model\.blocks\.(\d+)\.(\d+)\.', name)
    if m:
        return f'stage{m.group(1)}', f'blocks.{m.group(1)}.{m.group(2)}'
    if re.match(r'backbone\.timm_model\.(conv_stem|bn1)\.', name):
        return 'stem', 'stem'
    return None


def drift(model, anchor: Dict[str, Any]) -> Dict[str, float]:
    """‖θ − θ_0‖/‖θ_0‖ per stage, per block and over the whole backbone (trainable tensors)."""
    import torch
    sums: Dict[str, List[float]] = {}
    for name, p in model.named_parameters():
        key = block_of(name)
        if key is None or not p.requires_grad:
            continue
        a = anchor[name[len('backbone.'):]].to(p.dtype)
        d2 = float(torch.sum((p.detach() - a) ** 2))
        n2 = float(torch.sum(a ** 2))
        for k in (key[0], key[1], 'all'):
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] += d2
            acc[1] += n2
    return {k: math.sqrt(d2) / math.sqrt(n2) if n2 > 0 else 0.0 for k, (d2, n2) in sums.items()}


class Retention:
    """The original ImageNet classifier on a fine-tuned backbone: top-1 and agreement."""

    def __init__(self, ckpt_path: Path) -> None:
        import convert_lite0
        import torch
        self.ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        self.x_in, self.y_in = convert_lite0.imagenet_set()
        self.x_held = convert_lite0.held_out_set()
        pretrained = convert_lite0.classifier_from_checkpoint(self.ckpt)
        self.base_in = convert_lite0.predict(pretrained, self.x_in)
        self.base_held = convert_lite0.predict(pretrained, self.x_held)
        self.base_feat = self.features(pretrained)

    def features(self, model) -> Any:
        """Global-average-pooled backbone output (after the last block, before the old head's
        ``conv_head``) of all 64 images: 320-d per image."""
        import torch
        x = torch.cat([self.x_in, self.x_held])
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 16):
                h = model.bn1(model.conv_stem(x[i:i + 16]))
                out.append(model.blocks(h).mean((2, 3)))
        return torch.cat(out)

    def __call__(self, backbone_state: Dict[str, Any]) -> Dict[str, float]:
        import convert_lite0
        import torch
        model = convert_lite0.classifier_from_checkpoint(self.ckpt, backbone_state)
        pred_in = convert_lite0.predict(model, self.x_in)
        pred_held = convert_lite0.predict(model, self.x_held)
        cos = torch.nn.functional.cosine_similarity(self.features(model), self.base_feat, dim=1)
        return {'imagenet_top1': float((pred_in == self.y_in).float().mean()),
                'agreement': float((pred_held == self.base_held).float().mean()),
                'feature_cos': float(cos.mean())}

    def pretrained(self) -> Dict[str, float]:
        return {'imagenet_top1': float((self.base_in == self.y_in).float().mean()),
                'agreement': 1.0, 'feature_cos': 1.0, 'drift_all': 0.0}


def evaluate(runner, cfg, task: str, paths: Dict[str, Path], args: argparse.Namespace
             ) -> Dict[str, float]:
    """Task metrics of the trained model on the test splits (TestLoop of the runner)."""
    from mmengine.runner import TestLoop
    out: Dict[str, float] = {}
    if task == 'det':
        splits = {'test_in': 'annotations/test_in.json',
                  'test_cross': 'annotations/test_cross.json'}
        for split, ann in splits.items():
            dl = copy.deepcopy(cfg.test_dataloader)
            dl.dataset.ann_file = ann
            if args.quick and split == 'test_cross':
                dl.dataset.pop('indices', None)
            ev = copy.deepcopy(cfg.test_evaluator)
            ev.ann_file = str(paths['det'] / ann)
            metrics = TestLoop(runner, dl, ev).run()
            out[split] = float(metrics['coco/bbox_mAP'])
            out[f'{split}_50'] = float(metrics['coco/bbox_mAP_50'])
    else:
        for split in ('test', 'test_shifted'):
            dl = copy.deepcopy(cfg.test_dataloader)
            dl.dataset.data_prefix = dict(img_path=f'images/{split}',
                                          seg_map_path=f'annotations/{split}')
            metrics = TestLoop(runner, dl, copy.deepcopy(cfg.test_evaluator)).run()
            out[split] = float(metrics['mIoU'])
    return out


def run_one(task: str, method: str, value: float, seed: int, args: argparse.Namespace,
            paths: Dict[str, Path], retention: Retention, anchor: Dict[str, Any]
            ) -> Dict[str, Any]:
    from mmengine.logging import MMLogger

    from dualopt_mm.runner_cli import build_runner
    t0 = time.time()
    work_dir = Path(args.out_dir) / 'runs' / f'{task}_{method}_{value:g}_s{seed}'
    cfg = build_cfg(task, method, value, seed, args, paths, work_dir)
    runner = build_runner(cfg)
    runner.train()
    train_s = time.time() - t0
    val = runner.val_loop.run() if runner.val_loop is not None else {}
    metrics = {'val': float(val['coco/bbox_mAP'] if task == 'det' else val['mIoU'])}
    metrics.update(evaluate(runner, cfg, task, paths, args))
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    metrics.update(retention(model.backbone.state_dict()))
    blocks = drift(model, anchor)
    metrics['drift_all'] = blocks['all']
    wall = time.time() - t0
    MMLogger._instance_dict.clear()   # one logger per run; do not keep file handles around
    log(f'{task} {method:11s} {KNOB[method]}={value:g} seed {seed}: '
        + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items())
        + f' ({wall:.0f} s, {train_s:.0f} s training)')
    return {'task': task, 'method': method, 'knob': KNOB[method], 'value': value, 'seed': seed,
            'metrics': metrics, 'drift': blocks, 'wall_s': wall, 'train_s': train_s}


# ------------------------------------------------------------------------------------ planning


def select(runs: List[Dict], task: str, method: str, grid: Sequence[float],
           seeds: Sequence[int]) -> float:
    """The grid value with the best mean validation metric over ``seeds`` (ties: the first)."""
    best, best_score = grid[0], -math.inf
    for value in grid:
        scores = [find(runs, task, method, value, s)['metrics']['val'] for s in seeds]
        score = statistics.mean(scores)
        if score > best_score + 1e-12:
            best, best_score = value, score
    return best


Unit = Tuple[str, str, float, int]          # (task, method, knob value, seed): one training run


class Plan:
    """The runs the benchmark needs, handed out in the order that frees the selections first.

    First the sweep grid of every swept (task, method) on ``--sweep-seeds`` (the defaults are in
    the grids), detection before segmentation (its runs are longer), then the defaults on the
    other seeds (not with ``--tuned-only``). When the last grid run of a (task, method) is in,
    its knob is selected on validation and the selected value's runs on every seed go to the
    front of the queue.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.queue: List[Unit] = []
        self.seen: set = set()
        self.waiting: List[Tuple[str, str]] = []
        order = sorted(args.tasks, key=lambda t: t != 'det')
        for task in order:
            if args.sweep and task in args.sweep_tasks:
                for method in args.methods:
                    self.waiting.append((task, method))
                    for value in GRIDS[task][method][1]:
                        self._add([(task, method, value, s) for s in args.sweep_seeds])
        for task in order:
            swept = args.sweep and task in args.sweep_tasks
            if args.tuned_only and swept:
                continue            # the evaluation seeds get the selected values only
            for method in args.methods:
                self._add([(task, method, GRIDS[task][method][0], s) for s in args.seeds])

    @staticmethod
    def _key(unit: Unit) -> Tuple[str, str, str, int]:
        return unit[0], unit[1], f'{unit[2]:.12g}', unit[3]

    def _add(self, units: Sequence[Unit], front: bool = False) -> None:
        new = [u for u in units if self._key(u) not in self.seen]
        self.seen.update(self._key(u) for u in new)
        self.queue = new + self.queue if front else self.queue + new

    def next(self) -> Optional[Unit]:
        return self.queue.pop(0) if self.queue else None

    def planned(self) -> int:
        return len(self.seen)

    def update(self, runs: List[Dict], selection: Dict[str, Dict[str, float]]) -> None:
        """Select every (task, method) whose grid is complete; queue its selected runs."""
        for task, method in list(self.waiting):
            grid = GRIDS[task][method][1]
            if any(find(runs, task, method, v, s) is None
                   for v in grid for s in self.args.sweep_seeds):
                continue
            self.waiting.remove((task, method))
            chosen = select(runs, task, method, grid, self.args.sweep_seeds)
            selection.setdefault(task, {})[method] = chosen
            log(f'{task} {method}: selected {KNOB[method]}={chosen:g} on validation')
            self._add([(task, method, chosen, s) for s in self.args.seeds], front=True)


class Worker:
    """One process's share of the benchmark: the converted data, the retention probe, θ₀."""

    def __init__(self, args: argparse.Namespace) -> None:
        numerics.configure_torch(args.threads)
        import dualopt_mm  # noqa: F401  registers DualOpt*, L2SPHook, NormEvalHook
        self.args = args
        self.paths = prepare_data(Path(args.data_dir), args.quick)
        self.retention = Retention(self.paths['lite0'])
        self.anchor = self.retention.ckpt['state_dict']

    def __call__(self, unit: Unit) -> Dict[str, Any]:
        return run_one(*unit, self.args, self.paths, self.retention, self.anchor)


_WORKER: Optional[Worker] = None


def _start_worker(args: argparse.Namespace) -> None:
    global _WORKER
    _WORKER = Worker(args)


def _run_in_worker(unit: Unit) -> Dict[str, Any]:
    assert _WORKER is not None, 'the worker process was not initialised'
    return _WORKER(unit)


def run_all(args: argparse.Namespace) -> Dict[str, Any]:
    """Every planned run, in ``--jobs`` worker processes (1: in this process), then the file."""
    import concurrent.futures as cf
    import multiprocessing

    import real_sources
    t_start = time.time()
    numerics.configure_torch(args.threads)
    args._provenance = provenance.collect(args.threads, data=real_sources.versions())
    worker = Worker(args)       # converts the data once, before any worker process starts
    args._pretrained = worker.retention.pretrained()
    log(f'pretrained Lite0: ImageNet top-1 {args._pretrained["imagenet_top1"] * 20:.0f}/20')
    plan = Plan(args)
    runs: List[Dict[str, Any]] = []
    selection: Dict[str, Dict[str, float]] = {}

    def finished(run: Dict[str, Any]) -> None:
        runs.append(run)
        plan.update(runs, selection)
        log(f'progress: {len(runs)}/{plan.planned()} runs, '
            f'{(time.time() - t_start) / 60:.1f} min')
        if args.out_dir:
            write_json(args, runs, selection, time.time() - t_start, partial=True)

    if args.jobs <= 1:
        while (unit := plan.next()) is not None:
            finished(worker(unit))
    else:
        del worker
        context = multiprocessing.get_context('spawn')   # no fork of a process with OpenMP
        with cf.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_start_worker,
                                    initargs=(args,)) as pool:
            in_flight: Dict[cf.Future, Unit] = {}
            while True:
                while len(in_flight) < args.jobs and (unit := plan.next()) is not None:
                    in_flight[pool.submit(_run_in_worker, unit)] = unit
                if not in_flight:
                    break
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    del in_flight[future]
                    finished(future.result())
    return write_json(args, runs, selection, time.time() - t_start, partial=False)


def write_json(args: argparse.Namespace, runs: List[Dict], selection: Dict, wall: float,
               partial: bool) -> Dict[str, Any]:
    results = {
        'tool': 'projects/experiments/real_finetune.py',
        'partial': partial,
        'settings': {
            'tasks': list(args.tasks), 'methods': list(args.methods), 'seeds': list(args.seeds),
            'sweep': bool(args.sweep), 'sweep_seeds': list(args.sweep_seeds),
            'sweep_tasks': [t for t in args.tasks if args.sweep and t in args.sweep_tasks],
            'iters': dict(args.iters), 'quick': bool(args.quick), 'threads': args.threads,
            'jobs': args.jobs, 'tuned_only': bool(args.tuned_only),
            'grids': {t: {m: list(GRIDS[t][m][1]) for m in args.methods} for t in args.tasks},
            'defaults': {t: {m: GRIDS[t][m][0] for m in args.methods} for t in args.tasks},
            'ref_lr': REF_LR,
        },
        'pretrained': getattr(args, '_pretrained', None),
        'selection': selection,
        'runs': runs,
        'wall_s': wall,
        'provenance': args._provenance,
    }
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / 'results.json', 'w') as f:
            json.dump(results, f, indent=1)
    return results


# ----------------------------------------------------------------------------------------- cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default='work_dirs/real_finetune')
    parser.add_argument('--data-dir', default=str(ROOT / 'data' / 'real'),
                        help='converted weights and data (made on first use)')
    parser.add_argument('--tasks', nargs='+', default=['det', 'seg'], choices=['det', 'seg'])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    # None: not given (a default is filled in below, so that what was given can be checked)
    parser.add_argument('--seeds', nargs='+', type=int, default=None,
                        help='default: 0 1 2 (--quick: 0 1)')
    parser.add_argument('--sweep-seeds', nargs='+', type=int, default=None,
                        help='seeds the knob sweep selects on (default: 0)')
    parser.add_argument('--no-sweep', dest='sweep', action='store_false')
    parser.add_argument('--tuned-only', action='store_true',
                        help='swept tasks: run only the selected values on --seeds (the '
                             'defaults are in the grids on --sweep-seeds)')
    parser.add_argument('--sweep-tasks', nargs='+', default=None, choices=['det', 'seg'],
                        help='tasks that get the knob sweep (default: every one of --tasks)')
    parser.add_argument('--jobs', type=int, default=2,
                        help='worker processes that share the runs (1: all in this process)')
    parser.add_argument('--det-iters', type=int, default=None)
    parser.add_argument('--seg-iters', type=int, default=None)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (1: deterministic)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny run for tests: few iterations, 2 seeds, no sweep, small eval')
    parser.add_argument('--render', metavar='RESULTS_JSON',
                        help='print the tables of a results file and exit')
    parser.add_argument('--plot', metavar='PNG', help='with --render: also write the drift plot')
    parser.add_argument('--update-doc', metavar='MARKDOWN',
                        help='with --render: write the full tables between the page\'s '
                             '<!-- SECTION:begin/end --> markers (docs/experiments.md)')
    parser.add_argument('--doc-section', default=DOC_SECTION,
                        help=f'the markers --update-doc writes between (default {DOC_SECTION})')
    parser.add_argument('--update-readme', metavar='README',
                        help='with --render: write the summary tables between the README\'s '
                             f'<!-- {README_SECTION}:begin/end --> markers')
    args = parser.parse_args(argv)
    for name in ('jobs', 'threads', 'det_iters', 'seg_iters'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} {value}: give 1 or more')
    for name in ('tasks', 'methods', 'seeds', 'sweep_seeds', 'sweep_tasks'):
        values = getattr(args, name)
        if values is not None and len(set(values)) < len(values):
            parser.error(f'--{name.replace("_", "-")} {" ".join(map(str, values))}: give each '
                         'value once (a repeated seed would count twice in mean ± std)')
    no_sweep = '--quick' if args.quick else ('--no-sweep' if not args.sweep else None)
    for name in ('sweep_tasks', 'sweep_seeds', 'tuned_only'):
        if no_sweep and getattr(args, name) not in (None, False):
            parser.error(f'--{name.replace("_", "-")}: {no_sweep} runs no sweep; drop one of '
                         'the two')
    unswept = sorted(set(args.sweep_tasks or ()) - set(args.tasks))
    if unswept:
        parser.error(f'--sweep-tasks {" ".join(unswept)}: not among --tasks '
                     f'{" ".join(args.tasks)}; add it to --tasks or drop it from --sweep-tasks')
    if args.sweep_tasks is None:
        args.sweep_tasks = list(args.tasks)
    if args.sweep_seeds is None:
        args.sweep_seeds = [0]
    if args.seeds is None:
        args.seeds = [0, 1] if args.quick else [0, 1, 2]
    if args.quick:
        args.sweep = False
        args.eval_images = 2
    iters = {'det': 120, 'seg': 200} if not args.quick else {'det': 2, 'seg': 3}
    if args.det_iters is not None:
        iters['det'] = args.det_iters
    if args.seg_iters is not None:
        iters['seg'] = args.seg_iters
    args.iters = iters
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        text = render(results)
        print(text, end='')
        if args.plot:
            plot_drift(results, Path(args.plot))
        if results.get('partial') and (args.update_doc or args.update_readme):
            raise SystemExit(f'{args.render} is a partial run (written while it was running, or '
                             'by a run that stopped): the pages show complete runs only; finish '
                             'the run and render its results.json')
        if args.update_doc:
            common.replace_marked_section(args.update_doc, args.doc_section, text)
        if args.update_readme:
            common.replace_marked_section(args.update_readme, README_SECTION,
                                          render_summary(results))
        return results
    if args.update_doc or args.update_readme or args.plot:
        raise SystemExit('--update-doc, --update-readme and --plot work on a results file: '
                         'they need --render RESULTS_JSON')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    out = Path(args.out_dir)
    results = run_all(args)
    with open(out / 'results.json', 'w') as f:
        json.dump(results, f, indent=1)
    text = render(results)
    (out / 'results.md').write_text(text)
    png = plot_drift(results, out / 'drift.png')
    print(text)
    log(f'wrote {out / "results.json"}, {out / "results.md"}' + (f', {png}' if png else ''))
    return results


if __name__ == '__main__':
    main()
