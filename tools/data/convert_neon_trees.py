#!/usr/bin/env python
"""Tile the NEON tree-crown images shipped in ``deepforest==2.1.0`` into COCO-format splits.

Source (read from the installed wheel's files; ``deepforest`` is never imported): NEON airborne
RGB orthophotos (10 cm ground resolution) with hand-labelled tree-crown boxes in Pascal-VOC xml,

* ``2019_YELL_2_528000_4978000_image_crop2`` (2299x2472, 574 crowns, Yellowstone),
* ``2019_YELL_2_541000_4977000_image_crop``  (1249x1035, 279 crowns, Yellowstone, 13 km away),
* ``OSBS_029`` (400x400, 61 crowns, Ordway-Swisher, Florida),
* ``SOAP_061`` (400x400, 37 crowns, Soaproot Saddle, California).

Splits (spatially disjoint; ``<out>/images/<split>/*.png`` + ``<out>/annotations/<split>.json``):

``train``
    the non-overlapping ``tile`` x ``tile`` tiles of ``..._image_crop2`` above ``--val-from``
    (default y < 1792);
``val``
    the tiles of ``..._image_crop2`` below it (model / hyper-parameter selection);
``test_in``
    the tiles of ``..._image_crop`` (same site, a different place: in-domain test);
``test_cross``
    ``OSBS_029`` and ``SOAP_061`` whole (two other sites: the shifted-domain test).

A box that a tile boundary cuts is clipped to the tile and kept when at least ``--min-visible``
(default 0.5) of its area lies inside and both sides are >= 2 px. One category, ``tree`` (id 1).
Deterministic: same inputs, same files (PNG, tiles in row-major order).

Example::

    python tools/data/convert_neon_trees.py --out data/real/neon_trees
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_sources  # noqa: E402

DEFAULT_OUT = 'data/real/neon_trees'
SPLITS = ('train', 'val', 'test_in', 'test_cross')
CATEGORIES = [{'id': 1, 'name': 'tree', 'supercategory': 'plant'}]
Box = Tuple[float, float, float, float]  # x1, y1, x2, y2


def read_voc(path: Path) -> List[Box]:
    """Boxes (x1, y1, x2, y2) in pixels of a Pascal-VOC xml file."""
    boxes = []
    for obj in ET.parse(path).getroot().iter('object'):
        bb = obj.find('bndbox')
        boxes.append(tuple(float(bb.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax')))
    return boxes


def clip_boxes(boxes: Sequence[Box], x0: int, y0: int, w: int, h: int,
               min_visible: float) -> List[Box]:
    """Boxes in tile coordinates, clipped; those with less than ``min_visible`` inside dropped."""
    out = []
    for x1, y1, x2, y2 in boxes:
        cx1, cy1 = max(x1, x0), max(y1, y0)
        cx2, cy2 = min(x2, x0 + w), min(y2, y0 + h)
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            continue
        area = (x2 - x1) * (y2 - y1)
        if area <= 0 or (cx2 - cx1) * (cy2 - cy1) < min_visible * area:
            continue
        out.append((cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0))
    return out


def tile_origins(width: int, height: int, tile: int, y_from: int = 0,
                 y_to: Optional[int] = None) -> List[Tuple[int, int]]:
    """Top-left corners of the full, non-overlapping tiles inside rows [y_from, y_to)."""
    y_to = height if y_to is None else min(y_to, height)
    return [(x, y) for y in range(y_from, y_to - tile + 1, tile)
            for x in range(0, width - tile + 1, tile)]


class CocoWriter:
    """Accumulates one split's images and boxes and writes the COCO json."""

    def __init__(self, out: Path, split: str) -> None:
        self.out, self.split = out, split
        self.images: List[Dict] = []
        self.annotations: List[Dict] = []
        (out / 'images' / split).mkdir(parents=True, exist_ok=True)

    def add(self, image: np.ndarray, name: str, boxes: Sequence[Box], source: str,
            origin: Tuple[int, int]) -> None:
        from PIL import Image
        image_id = len(self.images) + 1
        file_name = f'{self.split}/{name}.png'
        Image.fromarray(image).save(self.out / 'images' / file_name)
        h, w = image.shape[:2]
        self.images.append({'id': image_id, 'file_name': file_name, 'width': w, 'height': h,
                            'source': source, 'origin_xy': list(origin)})
        for x1, y1, x2, y2 in boxes:
            bw, bh = x2 - x1, y2 - y1
            self.annotations.append({
                'id': len(self.annotations) + 1, 'image_id': image_id, 'category_id': 1,
                'bbox': [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                'area': round(bw * bh, 2), 'iscrowd': 0})

    def write(self) -> Path:
        path = self.out / 'annotations' / f'{self.split}.json'
        path.parent.mkdir(parents=True, exist_ok=True)
        info = f'NEON tree crowns (deepforest 2.1.0 data), split {self.split}'
        data = {'info': {'description': info},
                'licenses': [{'name': 'MIT (deepforest package); imagery: NEON (CC0/public)'}],
                'images': self.images, 'annotations': self.annotations, 'categories': CATEGORIES}
        with open(path, 'w') as f:
            json.dump(data, f, indent=1)
        return path


def load_image(stem: str) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(real_sources.neon_image(stem)).convert('RGB'))


def convert(out: Path, tile: int = 256, val_from: int = 1792, min_visible: float = 0.5,
            verbose: bool = True) -> Dict[str, Dict[str, int]]:
    """Write the four splits under ``out``; return {split: {'images', 'boxes'}}."""
    out = Path(out)
    writers = {s: CocoWriter(out, s) for s in SPLITS}

    def log(msg: str) -> None:
        if verbose:
            print(f'[convert_neon_trees] {msg}', flush=True)

    stem = real_sources.NEON_TRAIN_VAL
    image, boxes = load_image(stem), read_voc(real_sources.neon_xml(stem))
    h, w = image.shape[:2]
    log(f'{stem}: {w}x{h}, {len(boxes)} boxes -> train (y < {val_from}) / val tiles of {tile}')
    for split, (y_from, y_to) in (('train', (0, val_from)), ('val', (val_from, None))):
        for x, y in tile_origins(w, h, tile, y_from, y_to):
            writers[split].add(image[y:y + tile, x:x + tile], f'{stem}_{x}_{y}',
                               clip_boxes(boxes, x, y, tile, tile, min_visible), stem, (x, y))
    stem = real_sources.NEON_TEST_IN_DOMAIN
    image, boxes = load_image(stem), read_voc(real_sources.neon_xml(stem))
    h, w = image.shape[:2]
    log(f'{stem}: {w}x{h}, {len(boxes)} boxes -> test_in tiles of {tile}')
    for x, y in tile_origins(w, h, tile):
        writers['test_in'].add(image[y:y + tile, x:x + tile], f'{stem}_{x}_{y}',
                               clip_boxes(boxes, x, y, tile, tile, min_visible), stem, (x, y))
    for stem in real_sources.NEON_CROSS_SITE:
        image, boxes = load_image(stem), read_voc(real_sources.neon_xml(stem))
        h, w = image.shape[:2]
        log(f'{stem}: {w}x{h}, {len(boxes)} boxes -> test_cross (whole image)')
        writers['test_cross'].add(image, stem, clip_boxes(boxes, 0, 0, w, h, 0.0), stem, (0, 0))
    stats = {}
    for split, writer in writers.items():
        path = writer.write()
        stats[split] = {'images': len(writer.images), 'boxes': len(writer.annotations)}
        log(f'{split}: {stats[split]["images"]} images, {stats[split]["boxes"]} boxes -> {path}')
    return stats


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=DEFAULT_OUT, help='output folder')
    parser.add_argument('--tile', type=int, default=256, help='tile size in pixels')
    parser.add_argument('--val-from', type=int, default=1792,
                        help='first image row of the validation tiles of the YELL crop2 image')
    parser.add_argument('--min-visible', type=float, default=0.5,
                        help='keep a cut box when at least this fraction of it is inside a tile')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    convert(Path(args.out), args.tile, args.val_from, args.min_visible)
    return 0


if __name__ == '__main__':
    sys.exit(main())
