#!/usr/bin/env python
"""Evaluate a checkpoint with an MMDetection, MMSegmentation or MMPretrain config.

Scope-agnostic like ``tools/train.py``: the config's ``test_dataloader`` and ``test_evaluator``
(``CocoMetric``, ``IoUMetric``, ``Accuracy``, ...) run under the config's ``default_scope``.
``dualopt_mm`` is imported and :mod:`dualopt_mm.compat` applied, so checkpoints written by
mmengine 0.10 load under torch >= 2.6 and ``--launcher pytorch`` works on CPU.

Examples::

    python tools/test.py CFG work_dirs/x/epoch_12.pth
    python tools/test.py CFG CKPT --out results.pkl --show-dir vis
    torchrun --nproc_per_node=8 tools/test.py CFG CKPT --launcher pytorch
"""
from __future__ import annotations

import argparse
import inspect
import os.path as osp
import sys
from typing import Optional, Sequence


def _import_dualopt_mm() -> None:
    """Import dualopt_mm, from the installed package or else from this script's checkout."""
    try:
        import dualopt_mm  # noqa: F401
        return
    except ModuleNotFoundError as error:
        if error.name != 'dualopt_mm':
            raise
    directory = osp.dirname(osp.realpath(__file__))
    while directory != osp.dirname(directory):
        if osp.isfile(osp.join(directory, 'dualopt_mm', '__init__.py')):
            sys.path.insert(0, directory)
            import dualopt_mm  # noqa: F401
            return
        directory = osp.dirname(directory)
    raise SystemExit('dualopt_mm is not installed and this script is not inside a checkout of '
                     'it: run `pip install -e .` in the repository first.')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    _import_dualopt_mm()
    from dualopt_mm.runner_cli import add_runner_arguments, export_local_rank

    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector, segmentor or classifier checkpoint.')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the evaluation log '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file '
                        '(.pkl / .pickle)')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save images with drawn predictions here (relative '
                        'paths are placed under the run directory by some visualization hooks)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per shown image')
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    export_local_rank(args)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl or .pickle file, got {args.out!r}')
    return args


def enable_visualization(cfg, show: bool, show_dir: Optional[str], wait_time: float) -> None:
    """Turn on the config's ``default_hooks.visualization`` whatever its package.

    The hooks differ in their switches: MMDetection's ``DetVisualizationHook`` has ``draw`` and
    ``test_out_dir``, MMSegmentation's ``SegVisualizationHook`` has ``draw`` and saves through
    the visualizer's ``save_dir``, MMPretrain's ``VisualizationHook`` has ``enable`` and
    ``out_dir``. The hook's signature tells which applies.
    """
    from mmengine.registry import HOOKS

    hook_cfg = cfg.get('default_hooks', {}).get('visualization')
    if hook_cfg is None:
        raise SystemExit('--show/--show-dir need `default_hooks.visualization` in the config')
    hook_type = hook_cfg['type']
    if isinstance(hook_type, str):
        scope = cfg.get('default_scope')
        key = hook_type if '.' in hook_type or scope is None else f'{scope}.{hook_type}'
        hook_class = HOOKS.get(key)
        if hook_class is None:
            raise SystemExit(f'visualization hook {hook_type!r} is not registered (scope '
                             f'{scope!r})')
    else:
        hook_class = hook_type
    params = inspect.signature(hook_class).parameters
    for switch in ('draw', 'enable'):
        if switch in params:
            hook_cfg[switch] = True
    if show:
        hook_cfg['show'] = True
        if 'wait_time' in params:
            hook_cfg['wait_time'] = wait_time
    if show_dir:
        if 'test_out_dir' in params:
            hook_cfg['test_out_dir'] = show_dir
        elif 'out_dir' in params:
            hook_cfg['out_dir'] = show_dir
        else:
            cfg.visualizer['save_dir'] = show_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # also imports dualopt_mm

    from mmengine.evaluator import DumpResults
    from mmengine.registry import init_default_scope

    from dualopt_mm.compat import apply_all
    from dualopt_mm.runner_cli import build_runner, load_config

    apply_all()

    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'no checkpoint file at {args.checkpoint!r}')

    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show or args.show_dir:
        init_default_scope(cfg.get('default_scope', 'mmengine'))
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)

    runner = build_runner(cfg)

    if args.out:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
