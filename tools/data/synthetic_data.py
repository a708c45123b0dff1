"""Deterministic synthetic datasets in the on-disk formats of COCO, ADE20K and ImageNet.

The generated images contain filled convex shapes (triangle, square, pentagon, hexagon,
ellipse) whose *class decides both the shape and the colour*, on a noisy background, so a
model can learn something in a few iterations and the metrics are not pure noise. Everything
is drawn with numpy and Pillow; the output is read by the stock dataset classes of MMDetection
(``CocoDataset``), MMSegmentation (``ADE20KDataset``) and MMPretrain (``CustomDataset`` /
``ImageNet``).

Determinism: every image is drawn from its own random generator seeded with
``(seed, kind, split, image index)``, so the same arguments give the same files, and asking for
more images keeps the first ones unchanged. The class palette depends on ``seed`` only.

Layouts (``root`` is the directory passed in)::

    COCO (make_coco_dataset)           ADE20K (make_ade20k_dataset)
      annotations/instances_train.json    images/training/ADE_train_00000001.jpg
      annotations/instances_val.json      images/validation/ADE_val_00000001.jpg
      train/000000000001.jpg              annotations/training/ADE_train_00000001.png
      val/000000000001.jpg                annotations/validation/ADE_val_00000001.png

    classification (make_classification_dataset)
      train/<class name>/<class name>_0000.png
      val/<class name>/<class name>_0000.png
      meta/train.txt, meta/val.txt       ("<class>/<file> <label>" lines, ImageNet style)

Each generator also writes ``root/dataset_meta.json`` (the returned :class:`GeneratedDataset`).
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'SHAPES',
    'GeneratedDataset',
    'class_names',
    'make_coco_dataset',
    'make_ade20k_dataset',
    'make_classification_dataset',
]

#: Shape of class ``c`` is ``SHAPES[c % len(SHAPES)]``; (name, number of polygon vertices).
SHAPES: Tuple[Tuple[str, int], ...] = (
    ('triangle', 3),
    ('square', 4),
    ('pentagon', 5),
    ('hexagon', 6),
    ('ellipse', 32),
)

#: Called once per written image (e.g. ``tqdm.update``); receives the number of new images.
ProgressCallback = Callable[[int], None]

# Stream identifiers mixed into the seeds so that kinds and splits never share random numbers.
_KIND_IDS = {'coco': 1, 'ade20k': 2, 'classification': 3}
_SPLIT_IDS = {'train': 0, 'val': 1}
_PALETTE_STREAM = 7919


@dataclass(frozen=True)
class GeneratedDataset:
    """Description of a generated dataset, returned by every ``make_*`` function.

    Attributes:
        kind: ``'coco'``, ``'ade20k'`` or ``'classification'``.
        root: Absolute path of the dataset root.
        classes: Class names in label order (COCO category ids are ``1 + index``; ADE20K label
            values are ``1 + index`` before ``reduce_zero_label``; classification labels are
            ``index``, the sorted order of the class folders).
        palette: RGB colour each class is drawn with, same order as ``classes``.
        num_images: Number of images written per split (``'train'``, ``'val'``).
        image_size: ``(width, height)`` of every image.
        seed: Seed the dataset was generated with.
        paths: Absolute paths of the parts a config needs, e.g. ``'train_ann_file'``,
            ``'train_img_dir'``, ``'val_seg_dir'``; see each generator.
    """

    kind: str
    root: str
    classes: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    num_images: Dict[str, int]
    image_size: Tuple[int, int]
    seed: int
    paths: Dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def class_names(num_classes: int) -> Tuple[str, ...]:
    """Names of the generated classes: ``'class000_triangle'``, ``'class001_square'``, ...

    The zero-padded index keeps the sorted order of the names equal to the label order
    (classification datasets take their labels from the sorted folder names).
    """
    _check_positive_int('num_classes', num_classes)
    return tuple(f'class{c:03d}_{SHAPES[c % len(SHAPES)][0]}' for c in range(num_classes))


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')


def _check_image_size(image_size: Sequence[int], minimum: int = 32) -> Tuple[int, int]:
    if len(image_size) != 2:
        raise ValueError(f'image_size must be (width, height), got {image_size!r}')
    width, height = int(image_size[0]), int(image_size[1])
    if width < minimum or height < minimum:
        raise ValueError(
            f'image_size must be at least {minimum}x{minimum} pixels, got {width}x{height}')
    return width, height


def _palette(num_classes: int, seed: int) -> Tuple[Tuple[int, int, int], ...]:
    """Well separated, saturated colours: evenly spaced hues, shuffled by ``seed``."""
    rng = np.random.default_rng([seed, _PALETTE_STREAM])
    hues = (np.arange(num_classes) / num_classes + rng.uniform(0, 1)) % 1.0
    rng.shuffle(hues)
    colours = []
    for c, hue in enumerate(hues):
        # Alternate two brightness levels so neighbouring hues of large palettes still differ.
        value = 0.95 if c % 2 == 0 else 0.7
        colours.append(_hsv_to_rgb(float(hue), 0.85, value))
    return tuple(colours)


def _hsv_to_rgb(h: float, s: float, v: float) -> Tuple[int, int, int]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _image_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_IDS[kind], _SPLIT_IDS[split], index])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dim, smooth colour gradient plus pixel noise (H x W x 3 float array)."""
    base = rng.uniform(40, 110, size=3)
    tilt = rng.uniform(-30, 30, size=(2, 3))
    ys = np.linspace(-0.5, 0.5, height)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width)[None, :, None]
    image = base + ys * tilt[0] + xs * tilt[1]
    return image + rng.normal(0.0, 8.0, size=(height, width, 3))


def _polygon(rng: np.random.Generator, num_vertices: int, center: Tuple[float, float],
             radius: float) -> np.ndarray:
    """Vertices (n x 2, x/y) of a randomly rotated and slightly stretched convex polygon."""
    rotation = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.75, 1.25)
    angles = rotation + 2 * math.pi * np.arange(num_vertices) / num_vertices
    xs = center[0] + radius * aspect * np.cos(angles)
    ys = center[1] + radius / aspect * np.sin(angles)
    return np.stack([xs, ys], axis=1)


def _polygon_area(vertices: np.ndarray) -> float:
    """Shoelace formula."""
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _boxes_overlap(a: Sequence[float], b: Sequence[float], margin: float) -> bool:
    """Whether two (x0, y0, x1, y1) boxes, grown by ``margin``, intersect."""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place_shapes(rng: np.random.Generator, width: int, height: int, labels: Sequence[int],
                  min_fraction: float, max_fraction: float) -> List[Tuple[int, np.ndarray]]:
    """Non-overlapping polygons fully inside the image, one per label (some may not fit)."""
    placed: List[Tuple[int, np.ndarray]] = []
    boxes: List[Tuple[float, float, float, float]] = []
    short_side = min(width, height)
    for label in labels:
        num_vertices = SHAPES[label % len(SHAPES)][1]
        for _ in range(50):
            radius = rng.uniform(min_fraction, max_fraction) * short_side / 2
            # The polygon's stretch is at most 1.25: keep 1.3 * radius from every border.
            reach = 1.3 * radius
            if 2 * reach >= min(width, height) - 2:
                continue
            center = (rng.uniform(reach + 1, width - reach - 1),
                      rng.uniform(reach + 1, height - reach - 1))
            vertices = _polygon(rng, num_vertices, center, radius)
            box = (float(vertices[:, 0].min()), float(vertices[:, 1].min()),
                   float(vertices[:, 0].max()), float(vertices[:, 1].max()))
            if any(_boxes_overlap(box, other, margin=2.0) for other in boxes):
                continue
            placed.append((label, vertices))
            boxes.append(box)
            break
    return placed


def _shape_colour(rng: np.random.Generator, palette: Sequence[Tuple[int, int, int]],
                  label: int) -> Tuple[int, int, int]:
    """The class colour with a small per-instance jitter."""
    jitter = rng.integers(-12, 13, size=3)
    return tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(palette[label], jitter))


def _finish(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Add sensor noise and quantise to an 8-bit RGB image."""
    image = image + rng.normal(0.0, 4.0, size=image.shape)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode='RGB')


def _draw_polygons(image: np.ndarray, shapes: Sequence[Tuple[Tuple[int, int, int], np.ndarray]],
                   ) -> np.ndarray:
    """Fill polygons of given colours into a float image (returns a new array)."""
    canvas = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode='RGB')
    draw = ImageDraw.Draw(canvas)
    for colour, vertices in shapes:
        draw.polygon([tuple(v) for v in vertices.tolist()], fill=colour)
    return np.asarray(canvas, dtype=np.float64)


def _write_meta(dataset: GeneratedDataset) -> GeneratedDataset:
    """Write ``dataset_meta.json`` (the description) into the dataset root; return ``dataset``."""
    with open(osp.join(dataset.root, 'dataset_meta.json'), 'w', encoding='utf-8') as f:
        json.dump(dataset.to_dict(), f, indent=2)
    return dataset


def _split_counts(num_images: int, num_val_images: Optional[int]) -> Dict[str, int]:
    _check_positive_int('num_images', num_images)
    if num_val_images is None:
        num_val_images = num_images
    _check_positive_int('num_val_images', num_val_images)
    return {'train': int(num_images), 'val': int(num_val_images)}


# --------------------------------------------------------------------------- COCO


def make_coco_dataset(root: str,
                      num_images: int = 8,
                      image_size: Sequence[int] = (256, 192),
                      num_classes: int = 4,
                      seed: int = 0,
                      num_val_images: Optional[int] = None,
                      max_instances: int = 4,
                      progress: Optional[ProgressCallback] = None) -> GeneratedDataset:
    """Write a COCO-format detection + instance segmentation dataset.

    Every image holds 1..``max_instances`` non-overlapping shapes; each annotation has a
    ``bbox`` (x, y, w, h), a polygon ``segmentation`` (the exact polygon that was drawn),
    its polygon ``area`` and ``iscrowd=0``. Category ids are ``1..num_classes``.

    Args:
        root: Output directory (created if missing; existing files are overwritten).
        num_images: Training images.
        image_size: ``(width, height)``.
        num_classes: Number of categories.
        seed: Random seed.
        num_val_images: Validation images; defaults to ``num_images``.
        max_instances: Most shapes per image (at least one is always placed).
        progress: Called with ``1`` after each image.

    Returns:
        The description; ``paths`` holds ``train_ann_file``, ``val_ann_file``,
        ``train_img_dir``, ``val_img_dir``.
    """
    width, height = _check_image_size(image_size)
    counts = _split_counts(num_images, num_val_images)
    _check_positive_int('max_instances', max_instances)
    names = class_names(num_classes)
    palette = _palette(num_classes, seed)
    root = osp.abspath(root)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [{'id': c + 1, 'name': name, 'supercategory': 'shape'}
                  for c, name in enumerate(names)]
    paths: Dict[str, str] = {}
    for split, count in counts.items():
        img_dir = osp.join(root, split)
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = _image_rng(seed, 'coco', split, index)
            n_shapes = int(rng.integers(1, max_instances + 1))
            labels = rng.integers(0, num_classes, size=n_shapes).tolist()
            shapes = _place_shapes(rng, width, height, labels, 0.25, 0.6)
            image = _background(rng, width, height)
            image = _draw_polygons(
                image, [(_shape_colour(rng, palette, lab), v) for lab, v in shapes])
            image_id = index + 1
            file_name = f'{image_id:012d}.jpg'
            _finish(image, rng).save(osp.join(img_dir, file_name), quality=95)
            images.append({'id': image_id, 'file_name': file_name,
                           'width': width, 'height': height})
            for label, vertices in shapes:
                x0, y0 = vertices.min(axis=0)
                x1, y1 = vertices.max(axis=0)
                annotations.append({
                    'id': len(annotations) + 1,
                    'image_id': image_id,
                    'category_id': label + 1,
                    'bbox': [round(float(x0), 2), round(float(y0), 2),
                             round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                    'area': round(_polygon_area(vertices), 2),
                    'segmentation': [[round(float(v), 2) for v in vertices.reshape(-1)]],
                    'iscrowd': 0,
                })
            if progress is not None:
                progress(1)
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w', encoding='utf-8') as f:
            json.dump({
                'info': {'description': 'dualopt_mm synthetic shapes (COCO format)',
                         'version': '1.0', 'year': 2024},
                'licenses': [],
                'images': images,
                'annotations': annotations,
                'categories': categories,
            }, f)
        paths[f'{split}_ann_file'] = ann_file
        paths[f'{split}_img_dir'] = img_dir
    return _write_meta(GeneratedDataset('coco', root, names, palette, counts, (width, height),
                                        int(seed), paths))


# --------------------------------------------------------------------------- ADE20K


def make_ade20k_dataset(root: str,
                        num_images: int = 8,
                        image_size: Sequence[int] = (128, 128),
                        num_classes: int = 150,
                        seed: int = 0,
                        num_val_images: Optional[int] = None,
                        max_shapes: int = 5,
                        progress: Optional[ProgressCallback] = None) -> GeneratedDataset:
    """Write an ADE20K-format semantic segmentation dataset.

    Label maps are single-channel PNGs with values ``0..num_classes``: ``0`` is ADE20K's
    "other" (ignored with ``reduce_zero_label=True``, which maps it to 255 and every label
    ``L`` to ``L - 1``), ``1..num_classes`` are classes. Each image has a background region of
    one class, up to ``max_shapes`` shapes of other classes, and one "other" blob of random
    colour, so every map contains pixels to ignore.

    Args:
        root: Output directory.
        num_images: Training images.
        image_size: ``(width, height)``.
        num_classes: Number of classes (at most 254; ADE20K has 150).
        seed: Random seed.
        num_val_images: Validation images; defaults to ``num_images``.
        max_shapes: Most foreground shapes per image.
        progress: Called with ``1`` after each image.

    Returns:
        The description; ``paths`` holds ``train_img_dir``, ``val_img_dir``,
        ``train_seg_dir``, ``val_seg_dir`` (and the ADE20K names ``img_dir``/``ann_dir``
        relative to ``root`` are ``images/training`` etc.).
    """
    width, height = _check_image_size(image_size)
    counts = _split_counts(num_images, num_val_images)
    _check_positive_int('num_classes', num_classes)
    if num_classes > 254:
        raise ValueError(f'num_classes must be at most 254 (uint8 labels, 255 = ignore), '
                         f'got {num_classes}')
    _check_positive_int('max_shapes', max_shapes)
    names = class_names(num_classes)
    palette = _palette(num_classes, seed)
    root = osp.abspath(root)
    paths: Dict[str, str] = {}
    for split, ade_split, prefix in (('train', 'training', 'ADE_train'),
                                     ('val', 'validation', 'ADE_val')):
        img_dir = osp.join(root, 'images', ade_split)
        seg_dir = osp.join(root, 'annotations', ade_split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(seg_dir, exist_ok=True)
        for index in range(counts[split]):
            rng = _image_rng(seed, 'ade20k', split, index)
            background_label = int(rng.integers(0, num_classes))
            image = np.empty((height, width, 3), dtype=np.float64)
            image[:] = _shape_colour(rng, palette, background_label)
            image += rng.normal(0.0, 6.0, size=image.shape)
            label_map = Image.new('L', (width, height), color=background_label + 1)
            n_shapes = int(rng.integers(1, max_shapes + 1))
            labels = rng.integers(0, num_classes, size=n_shapes).tolist()
            # Label -1 is the "other" blob (label value 0, an ellipse), placed first so it fits.
            shapes = _place_shapes(rng, width, height, [-1] + labels, 0.15, 0.5)
            painted = []
            draw = ImageDraw.Draw(label_map)
            for label, vertices in shapes:
                if label < 0:
                    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
                    value = 0
                else:
                    colour = _shape_colour(rng, palette, label)
                    value = label + 1
                painted.append((colour, vertices))
                draw.polygon([tuple(v) for v in vertices.tolist()], fill=value)
            image = _draw_polygons(image, painted)
            stem = f'{prefix}_{index + 1:08d}'
            _finish(image, rng).save(osp.join(img_dir, stem + '.jpg'), quality=95)
            label_map.save(osp.join(seg_dir, stem + '.png'))
            if progress is not None:
                progress(1)
        paths[f'{split}_img_dir'] = img_dir
        paths[f'{split}_seg_dir'] = seg_dir
    return _write_meta(GeneratedDataset('ade20k', root, names, palette, counts, (width, height),
                                        int(seed), paths))


# --------------------------------------------------------------------------- classification


def make_classification_dataset(root: str,
                                num_images_per_class: int = 8,
                                num_classes: int = 10,
                                image_size: Sequence[int] = (64, 64),
                                seed: int = 0,
                                num_val_images_per_class: Optional[int] = None,
                                progress: Optional[ProgressCallback] = None,
                                ) -> GeneratedDataset:
    """Write an ImageNet-style folder dataset: ``root/{train,val}/<class>/*.png``.

    Each image shows one shape of its class (shape and colour are the class's) at a random
    position, size and rotation. ``meta/{train,val}.txt`` list ``<class>/<file> <label>`` for
    datasets that read ImageNet's annotation files.

    Args:
        root: Output directory.
        num_images_per_class: Training images per class.
        num_classes: Number of classes.
        image_size: ``(width, height)``.
        seed: Random seed.
        num_val_images_per_class: Validation images per class; defaults to
            ``num_images_per_class``.
        progress: Called with ``1`` after each image.

    Returns:
        The description; ``num_images`` counts all classes; ``paths`` holds ``train_dir``,
        ``val_dir``, ``train_ann_file``, ``val_ann_file``.
    """
    width, height = _check_image_size(image_size)
    per_class = _split_counts(num_images_per_class, num_val_images_per_class)
    names = class_names(num_classes)
    palette = _palette(num_classes, seed)
    root = osp.abspath(root)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    paths: Dict[str, str] = {}
    for split, count in per_class.items():
        split_dir = osp.join(root, split)
        lines = []
        for label, name in enumerate(names):
            class_dir = osp.join(split_dir, name)
            os.makedirs(class_dir, exist_ok=True)
            for index in range(count):
                rng = _image_rng(seed, 'classification', split, label * count + index)
                shapes = _place_shapes(rng, width, height, [label], 0.45, 0.72)
                image = _background(rng, width, height)
                image = _draw_polygons(
                    image, [(_shape_colour(rng, palette, lab), v) for lab, v in shapes])
                file_name = f'{name}_{index:04d}.png'
                _finish(image, rng).save(osp.join(class_dir, file_name))
                lines.append(f'{name}/{file_name} {label}')
                if progress is not None:
                    progress(1)
        ann_file = osp.join(root, 'meta', f'{split}.txt')
        with open(ann_file, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
        paths[f'{split}_dir'] = split_dir
        paths[f'{split}_ann_file'] = ann_file
    counts = {split: count * num_classes for split, count in per_class.items()}
    return _write_meta(GeneratedDataset('classification', root, names, palette, counts,
                                        (width, height), int(seed), paths))
