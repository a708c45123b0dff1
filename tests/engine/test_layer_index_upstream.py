"""Every backbone family of the mmdet COCO / mmseg ADE20K configs that defines no depth order of
its own gets a named block rule, in a depth order written out here by name (built from the real
classes, shrunk, random init). The backbones that define one are in test_layer_index_defined.py."""
import pytest
import torch.nn as nn
from mmengine.registry import DefaultScope

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.engine.layer_index import index_blocks

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

HRNET_W18 = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4, ),
                num_channels=(64, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4),
                num_channels=(18, 36)),
    stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4),
                num_channels=(18, 36, 72)),
    stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                num_channels=(18, 36, 72, 144)))


def _stages(prefix, depths, before=None, after=None, middle=None):
    """Block names of a staged backbone: per stage s, [before], blocks, [after]."""
    out = []
    for s, depth in enumerate(depths):
        if before:
            out.append(before.format(s=s))
        for b in range(depth):
            out.append(prefix.format(s=s, b=b))
            if b == 0 and middle:
                out.append(middle.format(s=s))
        if after:
            out.append(after.format(s=s))
    return out


# name: (scope, backbone cfg, rule, block order relative to 'backbone.')
CASES = {
    'CSPDarknet_yolox': ('mmdet', dict(type='CSPDarknet', deepen_factor=0.33,
                                       widen_factor=0.25), 'Staged',
                         ['stem'] + [f'stage{s}.{b}' for s in (1, 2, 3) for b in (0, 1)]
                         + ['stage4.0', 'stage4.1', 'stage4.2']),
    'CSPNeXt_rtmdet': ('mmdet', dict(type='CSPNeXt', deepen_factor=0.167, widen_factor=0.375),
                       'Staged', ['stem'] + [f'stage{s}.{b}' for s in (1, 2, 3) for b in (0, 1)]
                       + ['stage4.0', 'stage4.1', 'stage4.2']),
    'Darknet53_yolov3': ('mmdet', dict(type='Darknet', depth=53), 'Darknet',
                         ['stem'] + [x for s, n in enumerate((1, 2, 8, 8, 4), 1)
                                     for x in [f'conv_res_block{s}.conv']
                                     + [f'conv_res_block{s}.res{b}' for b in range(n)]]),
    'HourglassNet_cornernet': ('mmdet', dict(type='HourglassNet'), 'HourglassNet',
                               ['stem', 'hourglass_modules.0', 'out_convs.0', 'conv1x1s.0',
                                'remap_convs.0', 'inters.0', 'hourglass_modules.1',
                                'out_convs.1']),
    'SSDVGG_ssd': ('mmdet', dict(type='SSDVGG', depth=16, out_indices=(3, 4),
                                 out_feature_indices=(22, 34)), 'SSD VGG',
                   [f'features.{i}' for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28,
                                              31, 33)]),
    'EfficientNet_b3_mmdet': ('mmdet', dict(type='EfficientNet', arch='b3'),
                              'Twins/EfficientNet',
                              ['layers.0'] + [f'layers.{s}.{b}' for s, n in
                                              enumerate((2, 3, 3, 10, 8), 1) for b in range(n)]
                              + ['layers.6']),
    'HRNet_w18': ('mmdet', dict(type='HRNet', extra=HRNET_W18), 'Staged',
                  ['stem', 'layer1.0', 'layer1.1', 'layer1.2', 'layer1.3', 'transition1',
                   'stage2.0', 'transition2', 'stage3.0', 'stage3.1', 'stage3.2', 'stage3.3',
                   'transition3', 'stage4.0', 'stage4.1', 'stage4.2']),
    'PVT_v1': ('mmdet', dict(type='PyramidVisionTransformer', num_layers=[1, 1, 1, 1]), 'MiT',
               [x for s in range(4) for x in (f'layers.{s}.0', f'layers.{s}.1.0',
                                              f'layers.{s}.1.1')]),
    'PVT_v2': ('mmdet', dict(type='PyramidVisionTransformerV2', embed_dims=32,
                             num_layers=[1, 1, 1, 1]), 'MiT',
               [x for s in range(4) for x in (f'layers.{s}.0', f'layers.{s}.1.0',
                                              f'layers.{s}.2')]),
    'Twins_PCPVT': ('mmseg', dict(type='PCPVT', depths=[2, 2, 2, 2]), 'Twins/EfficientNet',
                    _stages('layers.{s}.{b}', [2, 2, 2, 2], before='patch_embeds.{s}',
                            middle='position_encodings.{s}')),
    'Twins_SVT': ('mmseg', dict(type='SVT', embed_dims=[32, 64, 128, 256],
                                num_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4],
                                depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
                                windiow_sizes=[7, 7, 7, 7], norm_after_stage=True),
                  'Twins/EfficientNet',
                  _stages('layers.{s}.{b}', [2, 2, 2, 2], before='patch_embeds.{s}',
                          middle='position_encodings.{s}', after='norm_list.{s}')),
    'MSCAN_segnext': ('mmseg', dict(type='MSCAN', depths=[2, 2, 2, 2]), 'MSCAN',
                      [x for s in range(1, 5) for x in
                       (f'patch_embed{s}', f'block{s}.0', f'block{s}.1', f'norm{s}')]),
    'PoolFormer_s12': ('mmpretrain', dict(type='PoolFormer', arch='s12'), 'PoolFormer',
                       ['network.0.0', 'network.0.1', 'network.1', 'network.2.0', 'network.2.1',
                        'network.3'] + [f'network.4.{b}' for b in range(6)]
                       + ['network.5', 'network.6.0', 'network.6.1', 'norm6']),
    'MobileNetV3_mmseg': ('mmseg', dict(type='MobileNetV3', arch='large'), 'MobileNetV3',
                          [f'layer{i}' for i in range(17)]),
    'MobileNetV2_mmdet': ('mmdet', dict(type='MobileNetV2'), 'ResNet',
                          ['stem'] + [f'layer{s}.{b}' for s, n in
                                      enumerate((1, 2, 3, 4, 3, 3, 1), 1) for b in range(n)]
                          + ['conv2']),
    'RegNet_400mf': ('mmdet', dict(type='RegNet', arch='regnetx_400mf'), 'ResNet',
                     ['stem'] + [f'layer{s}.{b}' for s, n in enumerate((1, 2, 7, 12), 1)
                                 for b in range(n)]),
    # timm's feature extractor has no group_matcher (the classifier has: upstream order)
    'timm_efficientnet_lite0_features': ('mmpretrain', dict(type='TIMMBackbone',
                                                            model_name='efficientnet_lite0',
                                                            features_only=True,
                                                            pretrained=False), 'timm features',
                                         ['timm_model.stem']
                                         + [f'timm_model.blocks.{s}.{b}' for s, n in
                                            enumerate((1, 2, 2, 3, 3, 4, 1)) for b in range(n)]),
    # mmpretrain backbones without get_layer_depth, or whose definition is refused
    'HorNet_tiny': ('mmpretrain', dict(type='HorNet', arch='tiny'), 'ConvNeXt',
                    [x for s, n in enumerate((2, 3, 18, 2))
                     for x in [f'downsample_layers.{s}'] + [f'stages.{s}.{b}' for b in range(n)]]
                    + ['norm3']),
    'HiViT_tiny': ('mmpretrain', dict(type='HiViT', arch='tiny'), 'ViT blocks',
                   ['stem'] + [f'blocks.{b}' for b in range(16)]),
}


def build_backbone(scope, cfg):
    if scope == 'mmdet':
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    else:
        import mmpretrain.models  # noqa: F401
        from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


@pytest.mark.parametrize('case', sorted(CASES))
def test_backbone_block_order_by_name(case):
    scope, cfg, rule, expected = CASES[case]
    if case.startswith('timm'):
        pytest.importorskip('timm')
    model = nn.Module()
    model.backbone = build_backbone(scope, cfg)
    names = ['backbone.' + n for n, p in model.backbone.named_parameters() if p.requires_grad]
    names += ['neck.weight', 'head.bias']
    index = index_blocks(names, model=model)  # the model defines no order of its own
    assert index.by_module(names) == {'backbone': f'rule: {rule}', 'neck': 'generic',
                                      'head': 'generic'}
    assert index_blocks(names, 'rules').blocks == index.blocks
    blocks = index.blocks
    order = sorted({b: i for b, i in blocks}.items(), key=lambda x: x[1])
    assert [b for b, _ in order] == ['backbone.' + b for b in expected] + ['neck', 'head']
    # weight and bias of one layer share a level; the index is dense 0..N
    assert [i for _, i in order] == list(range(len(order)))


def test_generic_rule_is_logged_for_an_unknown_backbone():
    import logging

    import torch.nn as nn
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper

    records = []
    handler = logging.Handler()
    handler.emit = records.append

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
            self.head = nn.Linear(4, 2)

    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        wrapper = build_optim_wrapper(Net(), dict(
            constructor='DualOptOptimWrapperConstructor', optimizer=dict(type='SGD', lr=0.1),
            paramwise_cfg=dict(dualopt=dict(pretrained='backbone'))))
    finally:
        logger.removeHandler(handler)
    out = '\n'.join(r.getMessage() for r in records)
    assert 'no block rule knows backbone: the generic rule is used' in out
    assert 'get_layer_index' in out and 'ArchitectureRule' in out
    assert [g['block'] for g in wrapper.optimizer.param_groups][:2] == ['backbone.0'] * 2
