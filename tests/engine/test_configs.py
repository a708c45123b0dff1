"""The shipped configs: each pair differs by one line, parses, builds, and trains on generated
data (models shrunk through overrides: R18 depth, small Swin, tiny images)."""
import glob
import json
import os.path as osp
from typing import Callable, Dict

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.hub import get_config
from mmengine.runner import Runner

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.compat import enable_mmengine_checkpoint_loading

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from dualopt_mm.testing.e2e import E2EModel, build_e2e_config  # noqa: E402

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')


def _set_transforms(pipeline, transform_type, **values):
    for transform in pipeline:
        if transform['type'] == transform_type:
            transform.update(values)


def _pipelines(cfg):
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(name):
            yield cfg[name].dataset.pipeline


def shrink_mmdet(cfg, data):
    """R50 -> R18 (or a small Swin), generated COCO at its own size."""
    model = cfg.model
    if model.backbone.type == 'SwinTransformer':
        model.backbone.update(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
        model.neck.in_channels = [32, 64, 128, 256]
    else:
        model.backbone.depth = 18
        model.neck.in_channels = [64, 128, 256, 512]
    model.backbone.init_cfg = None
    model.roi_head.bbox_head.num_classes = data.num_classes
    if model.roi_head.get('mask_head'):
        model.roi_head.mask_head.num_classes = data.num_classes
    for pipeline in _pipelines(cfg):
        _set_transforms(pipeline, 'Resize', scale=data.image_size)
    for split, name in (('train', 'train_dataloader'), ('val', 'val_dataloader'),
                        ('val', 'test_dataloader')):
        dataset = cfg[name].dataset
        dataset.update(data_root=data.root, ann_file=f'annotations/instances_{split}.json',
                       data_prefix=dict(img=f'{split}/'),
                       metainfo=dict(classes=list(data.classes)))
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = data.paths['val_ann_file']


def shrink_mmseg(cfg, data):
    """ResNetV1c-50 -> 18 (or a small Swin), channels 64, crops of the generated size."""
    side = min(data.image_size)
    model = cfg.model
    model.pretrained = None
    model.backbone.init_cfg = None
    if model.backbone.type == 'SwinTransformer':
        model.backbone.update(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
        in_channels = [32, 64, 128, 256]
    else:
        model.backbone.depth = 18
        in_channels = [64, 128, 256, 512]
    model.decode_head.update(in_channels=in_channels, channels=64)
    model.auxiliary_head.update(in_channels=in_channels[2], channels=64)
    model.data_preprocessor.size = (side, side)
    for pipeline in _pipelines(cfg):
        _set_transforms(pipeline, 'RandomResize', scale=(4 * side, side))
        _set_transforms(pipeline, 'RandomCrop', crop_size=(side, side))
        _set_transforms(pipeline, 'Resize', scale=(4 * side, side))
    for split, name in (('training', 'train_dataloader'), ('validation', 'val_dataloader'),
                        ('validation', 'test_dataloader')):
        cfg[name].dataset.update(data_root=data.root,
                                 data_prefix=dict(img_path=f'images/{split}',
                                                  seg_map_path=f'annotations/{split}'))


def shrink_mmpretrain(cfg, data):
    """ImageNet-style folders of the generated data in place of ImageNet / CUB / CIFAR."""
    side = min(data.image_size)
    model = cfg.model
    if model.backbone.type == 'SwinTransformer':  # Swin-L 384 -> Swin-T at 56 px
        model.backbone.update(arch='tiny', img_size=56)
        model.head.in_channels = 768
    model.backbone.init_cfg = None
    model.head.num_classes = data.num_classes
    cfg.data_preprocessor.num_classes = data.num_classes
    for pipeline in _pipelines(cfg):
        if pipeline[0]['type'] != 'LoadImageFromFile':  # CIFAR decodes arrays, we read files
            pipeline.insert(0, ConfigDict(type='LoadImageFromFile'))
        _set_transforms(pipeline, 'RandomResizedCrop', scale=side * 7 // 8)
        _set_transforms(pipeline, 'ResizeEdge', scale=side)
        _set_transforms(pipeline, 'Resize', scale=side)
        _set_transforms(pipeline, 'RandomCrop', crop_size=side * 7 // 8)
        _set_transforms(pipeline, 'CenterCrop', crop_size=side * 7 // 8)
    for split, name in (('train', 'train_dataloader'), ('val', 'val_dataloader'),
                        ('val', 'test_dataloader')):
        pipeline = cfg[name].dataset.pipeline
        cfg[name].dataset = ConfigDict(type='ImageNet', data_root=data.root, split=split,
                                       pipeline=pipeline,
                                       metainfo=dict(classes=list(data.classes)))


# stem -> (directory, shrink, data fixture, by_epoch, batch size, mode, expected optimizer)
PAIRS: Dict[str, tuple] = {
    'faster-rcnn_r50_fpn_1x_coco': ('faster_rcnn', shrink_mmdet, 'small_coco', True, 2,
                                    'finetune', 'DualOptSGD'),
    'mask-rcnn_r50_fpn_1x_coco': ('mask_rcnn', shrink_mmdet, 'small_coco', True, 2,
                                  'finetune', 'DualOptSGD'),
    'mask-rcnn_swin-t-p4-w7_fpn_1x_coco': ('mask_rcnn', shrink_mmdet, 'small_coco', True, 2,
                                           'finetune', 'DualOptAdamW'),
    'upernet_r50_4xb4-160k_ade20k-512x512': ('upernet', shrink_mmseg, 'small_ade20k', False, 2,
                                             'finetune', 'DualOptSGD'),
    'upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512': ('upernet', shrink_mmseg, 'small_ade20k',
                                                      False, 2, 'finetune', 'DualOptAdamW'),
    'resnet50_8xb8_cub': ('mmpretrain', shrink_mmpretrain, 'small_classification', True, 12,
                          'finetune', 'DualOptSGD'),
    'swin-large_8xb8_cub-384px': ('mmpretrain', shrink_mmpretrain, 'small_classification', True,
                                  12, 'finetune', 'DualOptAdamW'),
    'resnet50_8xb32_in1k': ('mmpretrain', shrink_mmpretrain, 'small_classification', True, 12,
                            'scratch', 'DualOptSGD'),
    'resnet18_8xb16_cifar10': ('mmpretrain', shrink_mmpretrain, 'small_classification', True, 12,
                               'scratch', 'DualOptSGD'),
}
HEAVY = {'mask-rcnn_swin-t-p4-w7_fpn_1x_coco', 'upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512',
         'swin-large_8xb8_cub-384px', 'mask-rcnn_r50_fpn_1x_coco'}


def without_scope(value):
    """A config value without the ``_scope_`` keys cross-package inheritance adds."""
    if isinstance(value, dict):
        return {k: without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [without_scope(v) for v in value]
    return value


def config_path(stem: str, variant: str) -> str:
    return osp.join(CONFIGS, PAIRS[stem][0], f'{stem}_{variant}.py')


def test_every_config_is_listed():
    shipped = sorted(glob.glob(osp.join(CONFIGS, '*', '*_baseline.py'))
                     + glob.glob(osp.join(CONFIGS, '*', '*_dualopt.py')))
    assert shipped == sorted(config_path(s, v) for s in PAIRS for v in ('baseline', 'dualopt'))


@pytest.mark.parametrize('stem', sorted(PAIRS))
def test_pair_differs_by_one_line_and_parses(stem):
    with open(config_path(stem, 'baseline')) as f:
        baseline = f.read().splitlines()
    with open(config_path(stem, 'dualopt')) as f:
        dualopt = f.read().splitlines()
    assert len(baseline) == len(dualopt)
    assert [i for i, (a, b) in enumerate(zip(baseline, dualopt)) if a != b] == [
        len(baseline) - 1]
    base_cfg = Config.fromfile(config_path(stem, 'baseline'))
    cfg = Config.fromfile(config_path(stem, 'dualopt'))
    assert base_cfg.optim_wrapper.constructor == 'DefaultOptimWrapperConstructor'
    assert cfg.optim_wrapper.constructor == 'DualOptOptimWrapperConstructor'
    assert cfg.custom_imports == dict(imports=['dualopt_mm'], allow_failed_imports=False)
    # everything else is the upstream config, optimizer kwargs included
    upstream = get_config(next(line for line in baseline
                               if line.startswith('_base_')).split("'")[1])
    assert cfg.optim_wrapper.optimizer.type == upstream.optim_wrapper.optimizer.type
    for key in ('train_cfg', 'model', 'param_scheduler', 'train_dataloader'):
        assert without_scope(cfg[key]) == without_scope(upstream[key]), key
    mode = PAIRS[stem][5]
    if mode == 'finetune':
        assert cfg.custom_hooks[0].type == 'WeightRollbackHook'
        assert base_cfg.custom_hooks == cfg.custom_hooks
        assert without_scope(cfg.optim_wrapper) == dict(
            without_scope(upstream.optim_wrapper), constructor='DualOptOptimWrapperConstructor')
    else:
        assert cfg.optim_wrapper.paramwise_cfg.dualopt.mode == 'scratch'
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.0


def _train(stem: str, variant: str, data, tmp_path, iters: int = 2) -> Runner:
    directory, shrink, _, by_epoch, batch, _, _ = PAIRS[stem]
    spec = E2EModel(config_path(stem, variant), data.kind, shrink, by_epoch,
                    train_batch_size=batch)
    cfg = build_e2e_config(spec, data, str(tmp_path / variant), length=1 if by_epoch else iters)
    for name in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                 'test_evaluator'):
        cfg[name] = None
    for hook in cfg.get('custom_hooks', []):
        hook.interval = 1
    # visualizers are process-wide instances by name: a second run would write to the first
    cfg.visualizer.name = f'visualizer_{stem}_{variant}_{osp.basename(str(tmp_path))}'
    enable_mmengine_checkpoint_loading()
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


CHECKS: Dict[str, Callable] = {}


@pytest.mark.parametrize('stem', [
    pytest.param(s, marks=pytest.mark.slow) if s in HEAVY else s for s in sorted(PAIRS)])
def test_dualopt_config_trains(stem, request, tmp_path):
    data = request.getfixturevalue(PAIRS[stem][2])
    runner = _train(stem, 'dualopt', data, tmp_path)
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == PAIRS[stem][6]
    assert runner.iter == 2
    groups = optimizer.param_groups
    reviewed = [g for g in groups if g['mode'] != 'none']
    assert reviewed and all(g['layer_id'] is not None for g in reviewed)
    state = [optimizer.state[g['params'][0]] for g in groups]
    assert all(torch.isfinite(p).all() for g in groups for p in g['params'])
    if PAIRS[stem][5] == 'finetune':
        # only the backbone is reviewed (no checkpoint offline: the build-time rule holds)
        assert {g['param_name'].split('.')[0] for g in reviewed} == {'backbone'}
        assert all('anchor' in s for g, s in zip(groups, state) if g['mode'] == 'finetune')
        run_dir = runner.log_dir
        with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
            records = [json.loads(line) for line in f]
        assert records[-1]['drift/all'] > 0
        with open(osp.join(run_dir, 'dualopt_levels.json')) as f:
            rows = json.load(f)
        assert rows[0]['layer_id'] == 0 and rows[0]['level'] == 0.01
    else:
        assert {g['mode'] for g in groups} == {'scratch'}
        assert all('anchor' not in s for s in state)
        assert {g['weight_decay'] for g in groups} == {0.0}


@pytest.mark.parametrize('stem', ['faster-rcnn_r50_fpn_1x_coco',
                                  'upernet_r50_4xb4-160k_ade20k-512x512',
                                  'resnet50_8xb8_cub'])
def test_baseline_config_trains_stock_optimizer_and_logs_drift(stem, request, tmp_path):
    data = request.getfixturevalue(PAIRS[stem][2])
    runner = _train(stem, 'baseline', data, tmp_path)
    expected = PAIRS[stem][6].replace('DualOpt', '')
    assert type(runner.optim_wrapper.optimizer) is getattr(torch.optim, expected)
    assert runner.message_hub.get_scalar('train/drift/all').current() > 0
