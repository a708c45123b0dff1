"""The block index takes the backbone's own depth definition, on real models (random init):
timm's ``group_matcher`` across model families and mmpretrain's ``get_layer_depth``. Same order
and same number of depths as upstream, tensor by tensor; the head after, by the generic rule."""
import logging

import pytest
import torch.nn as nn
from engine_toys import BackboneWithHead
from mmengine.registry import DefaultScope

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.engine.layer_index import dense_layer_ids, index_blocks

timm = pytest.importorskip('timm')
pytest.importorskip('mmpretrain')




def trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def check_against(index, names, upstream, prefix, source):
    """Every tensor under ``prefix`` sits at upstream's depth (densely ranked), the head after."""
    rank = {d: r for r, d in enumerate(sorted(set(upstream.values())))}
    ours = [i for n, (_, i) in zip(names, index.blocks) if n.startswith(prefix)]
    assert ours == [rank[upstream[n]] for n in names if n.startswith(prefix)]
    assert len(set(ours)) == len(rank) > 1
    head = [i for n, (_, i) in zip(names, index.blocks) if n.startswith('head.')]
    assert head == [len(rank)] * 2
    assert index.by_module(names) == {'backbone': source, 'head': 'generic'}
    assert index.refused == ()


# timm families: plain CNNs, stage CNNs (CSP, RegNet), mobile nets, ViT, hierarchical and
# hybrid transformers; (model, number of upstream depths) -- the first row of each family
# was mis-ordered or far finer under the name rules (docs/integration.md, "Block index")
TIMM = {
    'resnet18': 10,
    'regnety_002': 15,  # name rules: generic, 115 levels
    'cs3darknet_s': 11,  # rules: 648 of 4,278 pairs inverted
    'efficientnet_b0': 18,
    'mobilenetv3_small_050': 14,
    'convnext_atto': 14,  # rules: 252 of 7,558 pairs inverted
    'edgenext_xx_small': 14,
    'vit_tiny_patch16_224': 14,
    'swin_tiny_patch4_window7_224': 14,  # rules: 7 levels
    'levit_128s': 11,  # rules: 1,040 of 12,744 pairs inverted
    'fastvit_t8': 12,
    'pvt_v2_b0': 6,
    'vit_small_r26_s32_224': 14,  # hybrid: the ResNet inside is the ViT's stem
}


@pytest.mark.parametrize('model_name', sorted(TIMM))
def test_timm_model_used_directly_follows_group_matcher(model_name):
    backbone = timm.create_model(model_name, pretrained=False)
    net = BackboneWithHead(backbone)
    names = trainable(net)
    upstream = {'backbone.' + n: d for n, d in timm.models.group_parameters(
        backbone, backbone.group_matcher(coarse=False), reverse=True).items()}
    assert len(set(upstream.values())) == TIMM[model_name]
    index = index_blocks(names, model=net)
    check_against(index, names, upstream, 'backbone.', 'timm group_matcher')
    # tensors of one upstream depth share one block
    assert len({b for n, (b, _) in zip(names, index.blocks)
                if n.startswith('backbone.')}) == TIMM[model_name]


def build_mmpretrain(cfg):
    import mmpretrain.models  # noqa: F401
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


def test_timm_model_inside_timm_backbone_and_its_block_names():
    net = BackboneWithHead(build_mmpretrain(dict(type='TIMMBackbone', model_name='resnet18',
                                            pretrained=False)))
    inner = net.backbone.timm_model  # classifier reset by TIMMBackbone: no fc
    names = trainable(net)
    upstream = {'backbone.timm_model.' + n: d for n, d in timm.models.group_parameters(
        inner, inner.group_matcher(coarse=False), reverse=True).items()}
    index = index_blocks(names, model=net)
    check_against(index, names, upstream, 'backbone.timm_model.', 'timm group_matcher')
    order = sorted({b: i for b, i in index.blocks}.items(), key=lambda x: x[1])
    assert [b for b, _ in order] == (
        ['backbone.timm_model.depth0']  # conv1 + bn1: no single module
        + [f'backbone.timm_model.layer{s}.{b}' for s in (1, 2, 3, 4) for b in (0, 1)]
        + ['head'])


def test_timm_feature_extractor_without_group_matcher_uses_the_rule():
    backbone = build_mmpretrain(dict(type='TIMMBackbone', model_name='efficientnet_lite0',
                                     features_only=True, pretrained=False))
    net = BackboneWithHead(backbone)
    names = trainable(net)
    index = index_blocks(names, model=net)
    assert index.by_module(names) == {'backbone': 'rule: timm features', 'head': 'generic'}


# mmpretrain backbones with get_layer_depth: (cfg, number of depths); the name rules gave
# Swin-T 17 levels, ConvNeXt-T 23, ResNet-50 17, MixMIM-B 6 (its stages were read as ViT layers)
MMPRETRAIN = {
    'ViT_deit_tiny': (dict(type='VisionTransformer', arch='deit-tiny', img_size=32), 14),
    'Swin_tiny': (dict(type='SwinTransformer', arch='tiny'), 14),
    'ConvNeXt_tiny': (dict(type='ConvNeXt', arch='tiny'), 8),
    'BEiT_4_layers': (dict(type='BEiTViT', img_size=32, arch=dict(
        embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=128)), 6),
    'EVA02_tiny': (dict(type='ViTEVA02', arch='tiny', img_size=32), 14),
    'ResNet50': (dict(type='ResNet', depth=50), 7),
}


@pytest.mark.parametrize('case', sorted(MMPRETRAIN))
def test_mmpretrain_backbone_follows_get_layer_depth(case):
    cfg, depths = MMPRETRAIN[case]
    net = BackboneWithHead(build_mmpretrain(cfg))
    names = trainable(net)
    upstream = {n: net.backbone.get_layer_depth(n, 'backbone.')[0] for n in names
                if n.startswith('backbone.')}
    assert len(set(upstream.values())) == depths
    check_against(index_blocks(names, model=net), names, upstream, 'backbone.',
                  'mmpretrain get_layer_depth')


def test_mmpretrain_classifier_delegates_to_its_backbone():
    model = build_mmpretrain(dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', arch='deit-tiny', img_size=32),
        head=dict(type='LinearClsHead', num_classes=2, in_channels=192)))
    names = trainable(model)
    index = index_blocks(names, model=model)
    assert index.by_module(names) == {'backbone': 'mmpretrain get_layer_depth',
                                      'head': 'generic'}
    # the classifier's own depths (head at the last, with ln1) are the backbone's
    ours = [i for n, (_, i) in zip(names, index.blocks) if n.startswith('backbone.')]
    assert ours == [model.get_layer_depth(n)[0] for n in names if n.startswith('backbone.')]


def test_refused_definitions_fall_back_to_the_rules():
    # ResNet-18: mmpretrain has no depth table for it
    net = BackboneWithHead(build_mmpretrain(dict(type='ResNet', depth=18)))
    names = trainable(net)
    index = index_blocks(names, model=net)
    assert index.refused == ('backbone: mmpretrain get_layer_depth raised '
                             'NotImplementedError',)
    assert index.by_module(names)['backbone'] == 'rule: ResNet'
    assert dense_layer_ids([i for n, (_, i) in zip(names, index.blocks)
                            if n.startswith('backbone.')])[1] == 9  # stem + 8 blocks
    # ResNet-50 mounted elsewhere than 'backbone.': its definition tests 'backbone.layer'
    model = nn.Module()
    model.encoder = build_mmpretrain(dict(type='ResNet', depth=50))
    names = trainable(model)
    index = index_blocks(names, model=model)
    assert index.refused == ('encoder: mmpretrain get_layer_depth not used: its parameters '
                             'use 1 of the 8 depths it declares',)
    assert index.by_module(names) == {'encoder': 'rule: ResNet'}


def test_constructor_table_names_each_order_source():
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper

    class TwoBackbones(nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = timm.create_model('resnet18', pretrained=False, num_classes=0)
            self.encoder = build_mmpretrain(dict(type='ResNet', depth=18))
            self.head = nn.Linear(4, 2)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        groups = build_optim_wrapper(TwoBackbones(), dict(
            constructor='DualOptOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1),
            paramwise_cfg=dict(dualopt=dict(pretrained='all')))).optimizer.param_groups
    finally:
        logger.removeHandler(handler)
    by_name = {g['param_name']: g for g in groups}
    assert by_name['backbone.conv1.weight']['index_source'] == 'timm group_matcher'
    assert by_name['encoder.conv1.weight']['index_source'] == 'rule: ResNet'
    assert by_name['head.weight']['index_source'] == 'generic'
    out = '\n'.join(r.getMessage() for r in records)
    assert ("{'backbone': 'timm group_matcher', 'encoder': 'rule: ResNet', 'head': 'generic'}"
            in out)
    assert ('upstream depth definitions not used: encoder: mmpretrain get_layer_depth raised '
            'NotImplementedError') in out
    table = next(r.getMessage() for r in records if 'DualOpt param groups' in r.getMessage())
    header = table.splitlines()[1].split()
    assert header[:3] == ['name', 'block', 'order']
    row = next(line for line in table.splitlines() if line.startswith('backbone.conv1.weight'))
    assert 'timm group_matcher' in row
    # 'rules' brings back the name rules for the timm model ('ResNet' rule, same blocks here)
    groups = build_optim_wrapper(TwoBackbones(), dict(
        constructor='DualOptOptimWrapperConstructor', optimizer=dict(type='SGD', lr=0.1),
        paramwise_cfg=dict(dualopt=dict(pretrained='all', layer_index='rules')))
    ).optimizer.param_groups
    assert groups[0]['index_source'] == 'rule: ResNet'
