#!/usr/bin/env python
"""Generate small synthetic datasets in COCO, ADE20K and ImageNet-folder format.

The data lets the configs of this repository (and the tests) run end to end without
downloading anything: point a config's ``data_root`` at the output, e.g.::

    python tools/data/generate_datasets.py --kind all --out data/synthetic --num-images 16
    # -> data/synthetic/coco, data/synthetic/ade20k, data/synthetic/classification

See ``synthetic_data.py`` (beside this script) for the exact layouts. The images show shapes
whose class decides shape and colour, so models learn something in a few iterations.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time
from types import ModuleType
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

KINDS = ('coco', 'ade20k', 'classification')
DEFAULT_SIZES = {'coco': (256, 192), 'ade20k': (128, 128), 'classification': (64, 64)}


def _import_generators() -> ModuleType:
    """The generators, ``synthetic_data.py`` beside this script (numpy + Pillow only: no
    torch, no mmengine, so data can be generated in any environment)."""
    here = osp.dirname(osp.realpath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import synthetic_data
    return synthetic_data


def parse_image_size(text: str) -> Tuple[int, int]:
    """``'256x192'`` or ``'128'`` -> ``(width, height)``."""
    parts = text.lower().replace(',', 'x').split('x')
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'image size must look like 256x192 or 128, got {text!r}') from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 32:
        raise argparse.ArgumentTypeError(
            f'image size must be WIDTHxHEIGHT with both at least 32, got {text!r}')
    return sizes[0], sizes[1]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate deterministic synthetic datasets (COCO detection + instance '
        'masks, ADE20K semantic segmentation, ImageNet-style classification folders).')
    parser.add_argument('--kind', choices=KINDS + ('all',), default='all',
                        help='which dataset to write; "all" (default) writes each into OUT/<kind>')
    parser.add_argument('--out', default='data/synthetic',
                        help='output directory (with --kind all: the parent of one folder '
                        'per kind; default: data/synthetic)')
    parser.add_argument('--num-images', type=int, default=16,
                        help='images per split (classification: per class and split; '
                        'default: 16)')
    parser.add_argument('--num-val-images', type=int, default=None,
                        help='validation images (classification: per class); default: '
                        'same as --num-images')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classes (default: coco 4, ade20k 150, classification 10)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--image-size', type=parse_image_size, default=None,
                        help='WIDTHxHEIGHT, or one number for squares (default: coco '
                        '256x192, ade20k 128x128, classification 64x64)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    for name in ('num_images', 'num_val_images', 'num_classes'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    return args


class _Progress:
    """A progress bar: tqdm if installed, mmengine's ProgressBar otherwise, else plain lines."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._bar = None
        self._mm_bar = None
        self._done = 0
        self._total = total
        self._description = description
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=description, unit='img')
            return
        except ImportError:
            pass
        try:
            from mmengine.utils import ProgressBar
            print(description)
            self._mm_bar = ProgressBar(total)
        except ImportError:
            print(f'{description}: {total} images')

    def update(self, n: int = 1) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._mm_bar is not None:
            for _ in range(n):
                self._mm_bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._mm_bar is not None:
            sys.stdout.write('\n')


def _jobs(args: argparse.Namespace) -> Iterator[Tuple[str, str]]:
    kinds: List[str] = list(KINDS) if args.kind == 'all' else [args.kind]
    for kind in kinds:
        yield kind, osp.join(args.out, kind) if args.kind == 'all' else args.out


def generate(kind: str, out: str, args: argparse.Namespace,
             progress: Callable[[int], None]) -> object:
    """Write one dataset; returns its :class:`GeneratedDataset`."""
    synthetic_data = _import_generators()
    size = args.image_size or DEFAULT_SIZES[kind]
    if kind == 'coco':
        return synthetic_data.make_coco_dataset(
            out, num_images=args.num_images, image_size=size,
            num_classes=args.num_classes or 4, seed=args.seed,
            num_val_images=args.num_val_images, progress=progress)
    if kind == 'ade20k':
        return synthetic_data.make_ade20k_dataset(
            out, num_images=args.num_images, image_size=size,
            num_classes=args.num_classes or 150, seed=args.seed,
            num_val_images=args.num_val_images, progress=progress)
    return synthetic_data.make_classification_dataset(
        out, num_images_per_class=args.num_images, num_classes=args.num_classes or 10,
        image_size=size, seed=args.seed, num_val_images_per_class=args.num_val_images,
        progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for kind, out in _jobs(args):
        num_val = args.num_val_images or args.num_images
        total = args.num_images + num_val
        if kind == 'classification':
            total *= args.num_classes or 10
        bar = _Progress(total, f'{kind} -> {out}', enabled=not args.no_progress)
        start = time.perf_counter()
        try:
            dataset = generate(kind, out, args, bar.update)
        except ValueError as error:
            bar.close()
            print(f'error: {error}', file=sys.stderr)
            return 2
        bar.close()
        print(f'{kind}: {dataset.num_images["train"]} train / {dataset.num_images["val"]} val '
              f'images, {dataset.num_classes} classes, {dataset.image_size[0]}x'
              f'{dataset.image_size[1]}, in {dataset.root} '
              f'({time.perf_counter() - start:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
