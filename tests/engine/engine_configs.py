"""Shipped config pairs and how the engine tests shrink them for CPU runs on generated data."""
import os.path as osp
from typing import Dict

from e2e_harness import E2EModel, build_e2e_config
from mmengine.config import Config, ConfigDict

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
    """R50 -> R18, Swin-L -> Swin-T; ImageNet-style folders of the generated data in place of
    ImageNet / CUB / CIFAR."""
    side = min(data.image_size)
    model = cfg.model
    if model.backbone.type == 'SwinTransformer':  # Swin-L 384 -> Swin-T at 56 px
        model.backbone.update(arch='tiny', img_size=56, pad_small_map=True)
        model.head.in_channels = 768
    elif model.backbone.type == 'ResNet' and model.backbone.depth == 50:
        model.backbone.depth = 18
        model.head.in_channels = 512
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
    """Path of the shipped config ``<stem>_<variant>.py``."""
    return osp.join(CONFIGS, PAIRS[stem][0], f'{stem}_{variant}.py')


def shrunk_config(stem: str, variant: str, data, work_dir: str, iters: int = 2) -> Config:
    """The shipped config ``<stem>_<variant>.py`` shrunk for ``iters`` CPU iterations on
    ``data``, without validation, drift logged every iteration."""
    directory, shrink, _, by_epoch, batch, _, _ = PAIRS[stem]
    spec = E2EModel(config_path(stem, variant), data.kind, shrink, by_epoch,
                    train_batch_size=batch)
    cfg = build_e2e_config(spec, data, work_dir, length=1 if by_epoch else iters)
    for name in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                 'test_evaluator'):
        cfg[name] = None
    for hook in cfg.get('custom_hooks', []):
        hook.interval = 1
    if variant == 'dualopt' and PAIRS[stem][5] == 'finetune':
        # the shipped config names pretrained weights (init_cfg), which the shrink removes
        # (offline): say fine-tuning explicitly, or the constructor would choose scratch mode
        paramwise_cfg = cfg.optim_wrapper.setdefault('paramwise_cfg', ConfigDict())
        paramwise_cfg.setdefault('dualopt', ConfigDict())['mode'] = 'finetune'
    # visualizers are process-wide instances by name: a second run would write to the first
    cfg.visualizer.name = f'visualizer_{stem}_{variant}_{work_dir}'
    return cfg


