"""What ``tools/train.py`` and ``tools/test.py`` share: their common command-line options, the
config set-up from those options, and the runner construction.

The scripts also run as ``dualopt_mm/.mim/tools/*.py`` (``mim train`` / ``mim test``), so they
import this module absolutely (``from dualopt_mm.runner_cli import ...``) after making
``dualopt_mm`` importable.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Any


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--cfg-options``, ``--launcher`` and ``--local_rank`` / ``--local-rank``."""
    from mmengine.config import DictAction

    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs in xxx=yyy format; lists as '
        'key="[a,b]" or key=a,b; nested lists/tuples in quotes: key="[(a,b),(c,d)]"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def export_local_rank(args: argparse.Namespace) -> None:
    """Set ``LOCAL_RANK`` from ``--local_rank`` unless the launcher already set it."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def load_config(args: argparse.Namespace) -> Any:
    """Load ``args.config`` and apply ``--launcher``, ``--cfg-options`` and ``--work-dir``.

    work_dir priority: command line > config > ``./work_dirs/<config name>``.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_runner(cfg: Any) -> Any:
    """``Runner.from_cfg``, or the ``runner_type`` the config names (e.g. FlexibleRunner)."""
    from mmengine.registry import RUNNERS, init_default_scope
    from mmengine.runner import Runner

    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    # A runner registered by a downstream package is found in its scope's registry.
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return RUNNERS.build(cfg)
