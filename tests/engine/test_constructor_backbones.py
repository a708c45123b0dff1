"""The block index on real OpenMMLab backbones: literal groups (layer, level, wd, mode).

Each backbone is built alone (random init) under a ``backbone`` attribute beside a new linear
head, with AdamW(lr=1e-4, weight_decay=0.05), ``norm_decay_mult=0`` and the default
``k_max=0.01``, so the level of layer i out of N+1 is 0.01 * (1 - i/N).
"""
import pytest
import torch.nn as nn
from engine_toys import BackboneWithHead
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import dualopt_mm.engine  # noqa: F401

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')




def build_backbone(scope: str, cfg: dict) -> nn.Module:
    if scope == 'mmdet':
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    else:
        import mmpretrain.models  # noqa: F401
        from mmpretrain.registry import MODELS
    # the current default scope (set by any earlier Runner) would win over the registry's own
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


# (scope, backbone cfg, number of groups, num_layers, [(group index, name, block, layer_id,
#  level, weight_decay, mode)])
CASES = {
    'resnet50_mmdet_frozen_stem_and_layer1': (
        'mmdet', dict(type='ResNet', depth=50, frozen_stages=1), 128, 13, [
            (0, 'backbone.layer2.0.conv1.weight', 'backbone.layer2.0', 0, 0.01, 0.05,
             'finetune'),
            (1, 'backbone.layer2.0.bn1.weight', 'backbone.layer2.0', 0, 0.01, 0.0, 'finetune'),
            (42, 'backbone.layer3.0.conv2.weight', 'backbone.layer3.0', 4, 0.00666667, 0.05,
             'finetune'),
            (64, 'backbone.layer3.2.bn2.weight', 'backbone.layer3.2', 6, 0.005, 0.0,
             'finetune'),
            (125, 'backbone.layer4.2.bn3.bias', 'backbone.layer4.2', 12, 0.0, 0.0, 'finetune'),
            (127, 'head.bias', 'head', None, None, 0.05, 'none'),
        ]),
    'swin_t_mmdet': (
        'mmdet', dict(type='SwinTransformer'), 179, 20, [
            (0, 'backbone.patch_embed.projection.weight', 'backbone.stem', 0, 0.01, 0.05,
             'finetune'),
            (59, 'backbone.stages.1.downsample.norm.weight', 'backbone.stages.1.downsample', 8,
             0.00578947, 0.0, 'finetune'),
            (89, 'backbone.stages.2.blocks.2.norm1.bias', 'backbone.stages.2.blocks.2', 11,
             0.00421053, 0.0, 'finetune'),
            (176, 'backbone.norm3.bias', 'backbone.norm3', 19, 0.0, 0.0, 'finetune'),
        ]),
    # mmpretrain's ConvNeXt.get_layer_depth: 8 depths (stage 1 with the downsampling before
    # it, stage 2 by groups of three blocks), not one per block
    'convnext_t_mmpretrain': (
        'mmpretrain', dict(type='ConvNeXt', arch='tiny'), 182, 8, [
            (0, 'backbone.downsample_layers.0.0.weight', 'backbone.downsample_layers.0', 0,
             0.01, 0.05, 'finetune'),
            (60, 'backbone.stages.1.1.pointwise_conv2.bias', 'backbone.depth2', 2, 0.00714286,
             0.05, 'finetune'),
            (91, 'backbone.stages.2.2.norm.weight', 'backbone.depth3', 3, 0.00571429, 0.0,
             'finetune'),
            (179, 'backbone.norm3.bias', 'backbone.norm3', 7, 0.0, 0.0, 'finetune'),
        ]),
    'vit_deit_tiny_mmpretrain': (
        'mmpretrain', dict(type='VisionTransformer', arch='deit-tiny', img_size=32), 152, 14, [
            # VisionTransformer.get_layer_depth: same 14 depths as the ViT rule; its depth 0
            # (tokens and patch embedding) is no single module
            (0, 'backbone.cls_token', 'backbone.depth0', 0, 0.01, 0.05, 'finetune'),
            (1, 'backbone.pos_embed', 'backbone.depth0', 0, 0.01, 0.05, 'finetune'),
            (50, 'backbone.layers.3.ffn.layers.1.weight', 'backbone.layers.3', 4, 0.00692308,
             0.05, 'finetune'),
            (76, 'backbone.layers.6.ln1.weight', 'backbone.layers.6', 7, 0.00461538, 0.0,
             'finetune'),
            (149, 'backbone.ln1.bias', 'backbone.ln1', 13, 0.0, 0.0, 'finetune'),
        ]),
    'mit_b0_mmseg': (
        'mmseg', dict(type='MixVisionTransformer', embed_dims=32, num_layers=[2, 2, 2, 2],
                      num_heads=[1, 2, 5, 8]), 162, 16, [
            (0, 'backbone.layers.0.0.projection.weight', 'backbone.layers.0.0', 0, 0.01, 0.05,
             'finetune'),
            (54, 'backbone.layers.1.1.0.attn.norm.weight', 'backbone.layers.1.1.0', 5,
             0.00666667, 0.0, 'finetune'),
            (81, 'backbone.layers.1.1.1.ffn.layers.4.bias', 'backbone.layers.1.1.1', 6, 0.006,
             0.05, 'finetune'),
            (159, 'backbone.layers.3.2.bias', 'backbone.layers.3.2', 15, 0.0, 0.0, 'finetune'),
            (161, 'head.bias', 'head', None, None, 0.05, 'none'),
        ]),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_block_index_on_real_backbones(case):
    scope, cfg, num_groups, num_layers, expected = CASES[case]
    net = BackboneWithHead(build_backbone(scope, cfg))
    optimizer = build_optim_wrapper(net, dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.0))).optimizer
    groups = optimizer.param_groups
    assert len(groups) == num_groups
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert [g['param_name'] for g in groups] == trainable  # model order, frozen left out
    assert {g['num_layers'] for g in groups if g['mode'] != 'none'} == {num_layers}
    # every id 0..N is used
    ids = [g['layer_id'] for g in groups if g['layer_id'] is not None]
    assert sorted(set(ids)) == list(range(num_layers))
    levels = {id(p): k for p, _, _, k in optimizer.review_levels()}
    for index, name, block, layer_id, level, weight_decay, mode in expected:
        group = groups[index]
        got_level = levels[id(group['params'][0])] if group['layer_id'] is not None else None
        got = (index, group['param_name'], group['block'], group['layer_id'],
               None if got_level is None else round(got_level, 8), group['weight_decay'],
               group['mode'])
        assert got == (index, name, block, layer_id, level, weight_decay, mode)
