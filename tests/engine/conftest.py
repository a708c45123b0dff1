"""Fixtures of the engine tests: a real mmengine Runner around the toy detector."""
import os.path as osp

import pytest
from engine_runner import make_toy_runner
from mmengine.runner import Runner


@pytest.fixture(scope='session')
def small_coco(tmp_path_factory):
    """COCO instances, 4 train / 2 val images of 128x96 (half the harness's size), 4 classes."""
    from synthetic_data import make_coco_dataset
    return make_coco_dataset(str(tmp_path_factory.mktemp('engine_coco')), num_images=4,
                             num_val_images=2, image_size=(128, 96), num_classes=4, seed=0)


@pytest.fixture(scope='session')
def small_ade20k(tmp_path_factory):
    """ADE20K, 4 train / 2 val images of 64x64, 150 classes."""
    from synthetic_data import make_ade20k_dataset
    return make_ade20k_dataset(str(tmp_path_factory.mktemp('engine_ade20k')), num_images=4,
                               num_val_images=2, image_size=(64, 64), num_classes=150, seed=0)


@pytest.fixture(scope='session')
def small_classification(tmp_path_factory):
    """ImageNet-style folders, 6 classes x (4 train, 1 val) images of 64x64."""
    from synthetic_data import make_classification_dataset
    return make_classification_dataset(
        str(tmp_path_factory.mktemp('engine_classification')), num_images_per_class=4,
        num_val_images_per_class=1, num_classes=6, image_size=(64, 64), seed=0)


@pytest.fixture
def toy_runner(tmp_path):
    """``toy_runner(name, **kwargs)``: :func:`make_toy_runner` with work_dir tmp_path/name."""

    def make(name: str = 'run', **kwargs) -> Runner:
        return make_toy_runner(osp.join(str(tmp_path), name), **kwargs)

    return make
