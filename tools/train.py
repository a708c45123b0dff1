#!/usr/bin/env python
"""Train with an MMDetection, MMSegmentation or MMPretrain config, with dualopt_mm loaded.

The script is scope-agnostic: the config's ``default_scope`` (``mmdet``, ``mmseg``,
``mmpretrain``) decides which registries build the model, data and metrics. It imports
``dualopt_mm`` (so ``DualOptSGD`` / ``DualOptAdam(W)``, the constructor and the hook resolve even
without ``custom_imports``) and applies :mod:`dualopt_mm.compat`: mmengine 0.10 checkpoints load
under torch >= 2.6 for ``--resume`` / ``load_from``, and ``--launcher pytorch`` works on CPU-only
machines (gloo).

Examples::

    python tools/train.py configs/mask_rcnn/<config>.py
    python tools/train.py CFG --resume                      # latest checkpoint in work_dir
    python tools/train.py CFG --resume work_dirs/x/iter_4.pth
    torchrun --nproc_per_node=8 tools/train.py CFG --launcher pytorch
    mim train dualopt_mm <config file name>                 # runs this file from the package
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import sys
from typing import Optional, Sequence


def _import_dualopt_mm() -> None:
    """Import dualopt_mm, from the installed package or else from this script's checkout.

    Also right when the script runs as ``dualopt_mm/.mim/tools/train.py`` (``mim train``): no
    relative imports are used.
    """
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

    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier.')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the directory to save logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume training: alone, from the latest checkpoint in the work_dir; with a '
        'path, from that checkpoint')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper; needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the real batch size over the '
                        "config's auto_scale_lr.base_batch_size")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    if args.resume not in (None, 'auto') and '://' not in args.resume \
            and not osp.isfile(args.resume):
        parser.error(f'--resume: no checkpoint file at {args.resume!r}')
    export_local_rank(args)
    return args


def _enable_amp(cfg) -> None:
    from mmengine.device import get_device
    from mmengine.logging import print_log

    if get_device() == 'cpu':
        raise SystemExit("--amp needs a GPU (or NPU/MLU/MUSA device): mmengine's "
                         'AmpOptimWrapper cannot run on CPU.')
    optim_wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper_type == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return
    if optim_wrapper_type != 'OptimWrapper':
        raise SystemExit(f'--amp replaces OptimWrapper by AmpOptimWrapper, but the config uses '
                         f'{optim_wrapper_type!r}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def _enable_auto_scale_lr(cfg) -> None:
    auto_scale_lr = cfg.get('auto_scale_lr')
    if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
        raise SystemExit('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` in '
                         'the config (the total batch size its learning rate was set for).')
    cfg.auto_scale_lr.enable = True


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # also imports dualopt_mm

    from dualopt_mm.compat import apply_all
    from dualopt_mm.runner_cli import build_runner, load_config

    apply_all()

    cfg = load_config(args)

    if args.amp:
        _enable_amp(cfg)
    if args.auto_scale_lr:
        _enable_auto_scale_lr(cfg)

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    runner = build_runner(cfg)
    runner.train()
    _finish_distributed()


def _finish_distributed() -> None:
    """Wait for every rank, then close the process group: a rank that leaves while rank 0
    still writes a gathered checkpoint (FSDP / DeepSpeed full state) aborted the CPU gloo run
    at exit ('terminate called without an active exception'), and torchrun then killed rank 0
    mid-write."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
