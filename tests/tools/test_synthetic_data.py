"""Tests of the synthetic dataset generators and their CLI (tools/data/generate_datasets.py)."""
from __future__ import annotations

import filecmp
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_data import (
    SHAPES,
    class_names,
    make_ade20k_dataset,
    make_classification_dataset,
    make_coco_dataset,
)

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / 'tools' / 'data' / 'generate_datasets.py'


def _relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def _same_tree(a: Path, b: Path) -> bool:
    files = _relative_files(a)
    if files != _relative_files(b):
        return False
    for name in files:
        if name == 'dataset_meta.json':  # holds the absolute root
            continue
        if not filecmp.cmp(a / name, b / name, shallow=False):
            return False
    return True


# --------------------------------------------------------------------------- class names


def test_class_names_sort_in_label_order():
    names = class_names(12)
    assert names[0] == 'class000_triangle'
    assert names[4] == 'class004_ellipse'
    assert names[5] == 'class005_triangle'
    assert list(names) == sorted(names)
    assert len(set(names)) == 12


@pytest.mark.parametrize('bad', [0, -1, 1.5, True])
def test_class_names_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match='num_classes'):
        class_names(bad)


# --------------------------------------------------------------------------- COCO


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    return make_coco_dataset(str(root), num_images=6, num_val_images=3, image_size=(160, 120),
                             num_classes=5, seed=3)


def test_coco_layout_and_metadata(coco):
    root = Path(coco.root)
    assert coco.kind == 'coco'
    assert coco.num_images == {'train': 6, 'val': 3}
    assert coco.classes == class_names(5)
    assert len(list((root / 'train').glob('*.jpg'))) == 6
    assert len(list((root / 'val').glob('*.jpg'))) == 3
    assert coco.paths['train_ann_file'] == str(root / 'annotations' / 'instances_train.json')
    meta = json.loads((root / 'dataset_meta.json').read_text())
    assert meta['classes'] == list(coco.classes)
    assert meta['paths'] == coco.paths


def test_coco_annotations_are_valid_for_pycocotools(coco):
    coco_api = pytest.importorskip('pycocotools.coco')
    for split, count in coco.num_images.items():
        api = coco_api.COCO(coco.paths[f'{split}_ann_file'])
        assert sorted(api.getImgIds()) == list(range(1, count + 1))
        assert [c['name'] for c in api.loadCats(api.getCatIds())] == list(coco.classes)
        for image_id in api.getImgIds():
            info = api.loadImgs(image_id)[0]
            assert (info['width'], info['height']) == (160, 120)
            anns = api.loadAnns(api.getAnnIds(imgIds=image_id))
            assert anns, 'every image holds at least one object'
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert ann['iscrowd'] == 0
                assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 120
                assert w > 4 and h > 4
                mask = api.annToMask(ann)
                # The polygon area matches its rasterisation, and the mask fits the box.
                assert mask.sum() == pytest.approx(ann['area'], rel=0.1)
                ys, xs = np.nonzero(mask)
                assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1
                assert ys.min() >= int(y) - 1 and ys.max() <= y + h + 1


def test_coco_objects_have_their_class_colour(coco):
    """The learnable signal: pixels under a mask are the class's palette colour."""
    mask_utils = pytest.importorskip('pycocotools.mask')
    data = json.loads(Path(coco.paths['train_ann_file']).read_text())
    files = {im['id']: im['file_name'] for im in data['images']}
    for ann in data['annotations']:
        image = np.asarray(Image.open(osp.join(coco.paths['train_img_dir'],
                                               files[ann['image_id']])), dtype=np.float64)
        rles = mask_utils.frPyObjects(ann['segmentation'], 120, 160)
        mask = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        # Erode by dropping border pixels: JPEG blurs edges.
        inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) \
            & np.roll(mask, -2, 1)
        mean_colour = image[inner].mean(axis=0)
        expected = np.array(coco.palette[ann['category_id'] - 1], dtype=np.float64)
        assert np.abs(mean_colour - expected).max() < 25


def test_coco_is_deterministic_and_prefix_stable(coco, tmp_path):
    again = make_coco_dataset(str(tmp_path / 'a'), num_images=6, num_val_images=3,
                              image_size=(160, 120), num_classes=5, seed=3)
    assert _same_tree(Path(coco.root), Path(again.root))
    assert again.palette == coco.palette
    other = make_coco_dataset(str(tmp_path / 'b'), num_images=6, num_val_images=3,
                              image_size=(160, 120), num_classes=5, seed=4)
    assert not _same_tree(Path(coco.root), Path(other.root))
    # More images keep the first ones unchanged.
    more = make_coco_dataset(str(tmp_path / 'c'), num_images=8, num_val_images=3,
                             image_size=(160, 120), num_classes=5, seed=3)
    for name in sorted(os.listdir(coco.paths['train_img_dir'])):
        assert filecmp.cmp(osp.join(coco.paths['train_img_dir'], name),
                           osp.join(more.paths['train_img_dir'], name), shallow=False)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_images=0), 'num_images'),
    (dict(num_val_images=0), 'num_val_images'),
    (dict(image_size=(16, 64)), 'image_size'),
    (dict(image_size=(64,)), 'image_size'),
    (dict(num_classes=0), 'num_classes'),
    (dict(max_instances=0), 'max_instances'),
])
def test_coco_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_coco_dataset(str(tmp_path), **kwargs)


# --------------------------------------------------------------------------- ADE20K


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    return make_ade20k_dataset(str(root), num_images=5, num_val_images=2, image_size=(96, 64),
                               num_classes=150, seed=1)


def test_ade20k_layout(ade):
    root = Path(ade.root)
    for split, ade_split, prefix, count in (('train', 'training', 'ADE_train', 5),
                                            ('val', 'validation', 'ADE_val', 2)):
        images = sorted(p.stem for p in (root / 'images' / ade_split).glob('*.jpg'))
        maps = sorted(p.stem for p in (root / 'annotations' / ade_split).glob('*.png'))
        assert images == maps == [f'{prefix}_{i:08d}' for i in range(1, count + 1)]
        assert ade.paths[f'{split}_img_dir'] == str(root / 'images' / ade_split)
        assert ade.paths[f'{split}_seg_dir'] == str(root / 'annotations' / ade_split)
    assert len(ade.classes) == 150


def test_ade20k_label_maps_follow_the_reduce_zero_label_convention(ade):
    for path in sorted(Path(ade.paths['train_seg_dir']).glob('*.png')):
        label_map = Image.open(path)
        assert label_map.mode == 'L'
        assert label_map.size == (96, 64)
        values = np.unique(np.asarray(label_map))
        assert values.min() == 0, 'each map holds "other" pixels (ignored after reduction)'
        assert values.max() <= 150
        assert len(values) >= 2, 'each map holds at least one real class'


def test_ade20k_regions_have_their_class_colour(ade):
    image_dir = Path(ade.paths['train_img_dir'])
    for path in sorted(Path(ade.paths['train_seg_dir']).glob('*.png')):
        labels = np.asarray(Image.open(path))
        image = np.asarray(Image.open(image_dir / (path.stem + '.jpg')), dtype=np.float64)
        for value in np.unique(labels):
            region = labels == value
            inner = region & np.roll(region, 2, 0) & np.roll(region, -2, 0) \
                & np.roll(region, 2, 1) & np.roll(region, -2, 1)
            if value == 0 or inner.sum() < 20:
                continue
            expected = np.array(ade.palette[value - 1], dtype=np.float64)
            assert np.abs(image[inner].mean(axis=0) - expected).max() < 25


def test_ade20k_is_deterministic(ade, tmp_path):
    again = make_ade20k_dataset(str(tmp_path), num_images=5, num_val_images=2,
                                image_size=(96, 64), num_classes=150, seed=1)
    assert _same_tree(Path(ade.root), Path(again.root))


def test_ade20k_rejects_too_many_classes(tmp_path):
    with pytest.raises(ValueError, match='at most 254'):
        make_ade20k_dataset(str(tmp_path), num_classes=255)


# --------------------------------------------------------------------------- classification


@pytest.fixture(scope='module')
def cls_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('cls')
    return make_classification_dataset(str(root), num_images_per_class=3, num_classes=6,
                                       image_size=(48, 40), seed=2,
                                       num_val_images_per_class=2)


def test_classification_folders(cls_data):
    root = Path(cls_data.root)
    assert cls_data.num_images == {'train': 18, 'val': 12}
    for split, per_class in (('train', 3), ('val', 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == list(cls_data.classes)
        for name in folders:
            files = sorted((root / split / name).glob('*.png'))
            assert len(files) == per_class
            assert Image.open(files[0]).size == (48, 40)
        lines = (root / 'meta' / f'{split}.txt').read_text().split('\n')[:-1]
        assert len(lines) == 6 * per_class
        for line in lines:
            path, label = line.split(' ')
            assert (root / split / path).is_file()
            assert path.split('/')[0] == cls_data.classes[int(label)]


def test_classification_shape_follows_the_class(cls_data):
    for label, name in enumerate(cls_data.classes):
        image = np.asarray(Image.open(
            Path(cls_data.paths['train_dir']) / name / f'{name}_0000.png'), dtype=np.float64)
        distance = np.abs(image - np.array(cls_data.palette[label])).max(axis=2)
        # The shape (a triangle is the smallest: >= 5% of the image) is in its class colour.
        assert (distance < 30).mean() > 0.04
        # ... and the background is not.
        assert (distance < 30).mean() < 0.6
    assert [shape for shape, _ in SHAPES] == ['triangle', 'square', 'pentagon', 'hexagon',
                                              'ellipse']


def test_classification_is_deterministic(cls_data, tmp_path):
    again = make_classification_dataset(str(tmp_path), num_images_per_class=3, num_classes=6,
                                        image_size=(48, 40), seed=2,
                                        num_val_images_per_class=2)
    assert _same_tree(Path(cls_data.root), Path(again.root))


# --------------------------------------------------------------------------- upstream readers


def test_mmdet_coco_dataset_reads_it(coco):
    datasets = pytest.importorskip('mmdet.datasets')
    dataset = datasets.CocoDataset(
        data_root=coco.root, ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'), metainfo=dict(classes=coco.classes), pipeline=[],
        filter_cfg=dict(filter_empty_gt=True, min_size=4), test_mode=False)
    assert len(dataset) == 6
    info = dataset[0]
    assert info['img_path'].startswith(coco.paths['train_img_dir'])
    assert info['instances'] and all(len(inst['mask'][0]) >= 6 for inst in info['instances'])
    assert {inst['bbox_label'] for inst in info['instances']} <= set(range(5))


def test_mmseg_ade20k_dataset_reads_it(ade):
    datasets = pytest.importorskip('mmseg.datasets')
    dataset = datasets.ADE20KDataset(
        data_root=ade.root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=[])
    assert len(dataset) == 2
    assert dataset.reduce_zero_label
    assert dataset[0]['seg_map_path'].endswith('ADE_val_00000001.png')


def test_mmpretrain_custom_dataset_reads_it(cls_data):
    datasets = pytest.importorskip('mmpretrain.datasets')
    dataset = datasets.CustomDataset(data_root=cls_data.root, data_prefix='val', pipeline=[])
    assert len(dataset) == 12
    assert tuple(dataset.CLASSES) == cls_data.classes
    assert [dataset.get_gt_labels()[i] for i in (0, 2, 11)] == [0, 1, 5]


# --------------------------------------------------------------------------- CLI


def test_cli_help():
    result = subprocess.run([sys.executable, str(CLI), '--help'], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    for option in ('--kind', '--out', '--num-images', '--seed', '--image-size'):
        assert option in result.stdout


def test_cli_generates_all_kinds(tmp_path):
    result = subprocess.run(
        [sys.executable, str(CLI), '--kind', 'all', '--out', str(tmp_path), '--num-images', '2',
         '--num-classes', '3', '--seed', '5', '--image-size', '64x48', '--no-progress'],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for kind in ('coco', 'ade20k', 'classification'):
        meta = json.loads((tmp_path / kind / 'dataset_meta.json').read_text())
        assert meta['kind'] == kind
        assert meta['seed'] == 5
        assert meta['image_size'] == [64, 48]
        assert len(meta['classes']) == 3
    # Same files as the library call with the same arguments.
    direct = make_coco_dataset(str(tmp_path / 'direct'), num_images=2, image_size=(64, 48),
                               num_classes=3, seed=5)
    assert _same_tree(tmp_path / 'coco', Path(direct.root))


def test_cli_rejects_bad_sizes(tmp_path):
    result = subprocess.run(
        [sys.executable, str(CLI), '--out', str(tmp_path), '--image-size', '10x10'],
        capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert 'at least 32' in result.stderr
