"""Layer index rules on parameter-name lists (no models): literal blocks and block indices."""
import pytest

from dualopt_mm.engine.layer_index import (
    DEFAULT_RULES,
    ArchitectureRule,
    BlockPattern,
    assign_blocks,
    dense_layer_ids,
)


def blocks_of(names, **kwargs):
    return dict(zip(names, assign_blocks(names, **kwargs)))


RESNET = [
    'backbone.conv1.weight', 'backbone.bn1.weight', 'backbone.bn1.bias',
    'backbone.layer1.0.conv1.weight', 'backbone.layer1.0.bn1.weight',
    'backbone.layer1.0.downsample.0.weight', 'backbone.layer1.1.conv1.weight',
    'backbone.layer2.0.conv1.weight', 'backbone.layer2.0.conv2.weight',
    'neck.lateral_convs.0.conv.weight', 'neck.lateral_convs.0.conv.bias',
    'neck.fpn_convs.0.conv.weight', 'rpn_head.rpn_conv.weight', 'rpn_head.rpn_conv.bias',
]


def test_resnet_blocks_and_generic_neck():
    got = blocks_of(RESNET)
    assert got['backbone.conv1.weight'] == ('backbone.stem', 0)
    assert got['backbone.bn1.bias'] == ('backbone.stem', 0)
    assert got['backbone.layer1.0.conv1.weight'] == ('backbone.layer1.0', 1)
    assert got['backbone.layer1.0.downsample.0.weight'] == ('backbone.layer1.0', 1)
    assert got['backbone.layer1.1.conv1.weight'] == ('backbone.layer1.1', 2)
    assert got['backbone.layer2.0.conv2.weight'] == ('backbone.layer2.0', 3)
    # generic fallback: one block per module owning parameters, in registration order
    assert got['neck.lateral_convs.0.conv.weight'] == ('neck.lateral_convs.0.conv', 4)
    assert got['neck.lateral_convs.0.conv.bias'] == ('neck.lateral_convs.0.conv', 4)
    assert got['neck.fpn_convs.0.conv.weight'] == ('neck.fpn_convs.0.conv', 5)
    assert got['rpn_head.rpn_conv.bias'] == ('rpn_head.rpn_conv', 6)


def test_tensor_strategy_is_tensor_order():
    assert assign_blocks(RESNET[:3], strategy='tensor') == [
        ('backbone.conv1.weight', 0), ('backbone.bn1.weight', 1), ('backbone.bn1.bias', 2)]


def test_swin_registration_order_is_not_depth_order():
    # mmdet/mmseg Swin: output norms norm{i} are registered after all stages
    names = [
        'backbone.absolute_pos_embed', 'backbone.patch_embed.projection.weight',
        'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight',
        'backbone.stages.0.blocks.1.norm1.weight',
        'backbone.stages.0.downsample.reduction.weight',
        'backbone.stages.1.blocks.0.ffn.layers.0.0.weight',
        'backbone.norm0.weight', 'backbone.norm1.weight',
    ]
    got = blocks_of(names)
    assert got['backbone.absolute_pos_embed'] == ('backbone.stem', 0)
    assert got['backbone.patch_embed.projection.weight'] == ('backbone.stem', 0)
    assert got['backbone.stages.0.blocks.0.attn.w_msa.qkv.weight'] == (
        'backbone.stages.0.blocks.0', 1)
    assert got['backbone.stages.0.blocks.1.norm1.weight'] == ('backbone.stages.0.blocks.1', 2)
    assert got['backbone.norm0.weight'] == ('backbone.norm0', 3)
    assert got['backbone.stages.0.downsample.reduction.weight'] == (
        'backbone.stages.0.downsample', 4)
    assert got['backbone.stages.1.blocks.0.ffn.layers.0.0.weight'] == (
        'backbone.stages.1.blocks.0', 5)
    assert got['backbone.norm1.weight'] == ('backbone.norm1', 6)


def test_convnext_downsample_layers_precede_their_stage():
    names = [
        'backbone.downsample_layers.0.0.weight', 'backbone.downsample_layers.1.1.weight',
        'backbone.stages.0.0.depthwise_conv.weight', 'backbone.stages.0.1.gamma',
        'backbone.stages.1.0.pointwise_conv1.weight', 'backbone.norm0.weight',
        'backbone.norm1.weight', 'head.fc.weight',
    ]
    got = blocks_of(names)
    assert [got[n][1] for n in names] == [0, 4, 1, 2, 5, 3, 6, 7]
    assert got['backbone.downsample_layers.1.1.weight'][0] == 'backbone.downsample_layers.1'
    assert got['head.fc.weight'] == ('head.fc', 7)


def test_vit_stem_layers_and_tail():
    names = [
        'backbone.cls_token', 'backbone.pos_embed', 'backbone.patch_embed.projection.weight',
        'backbone.layers.0.ln1.weight', 'backbone.layers.0.ffn.layers.0.0.weight',
        'backbone.layers.1.attn.qkv.weight', 'backbone.ln1.weight', 'backbone.ln1.bias',
        'head.layers.head.weight',
    ]
    got = blocks_of(names)
    assert got['backbone.cls_token'] == ('backbone.stem', 0)
    assert got['backbone.patch_embed.projection.weight'] == ('backbone.stem', 0)
    assert got['backbone.layers.0.ffn.layers.0.0.weight'] == ('backbone.layers.0', 1)
    assert got['backbone.layers.1.attn.qkv.weight'] == ('backbone.layers.1', 2)
    assert got['backbone.ln1.bias'] == ('backbone.ln1', 3)
    assert got['head.layers.head.weight'] == ('head.layers.head', 4)


def test_mit_is_not_mistaken_for_vit():
    names = [
        'backbone.layers.0.0.projection.weight', 'backbone.layers.0.1.0.attn.attn.in_proj_weight',
        'backbone.layers.0.1.1.norm1.weight', 'backbone.layers.0.2.weight',
        'backbone.layers.1.0.projection.weight', 'backbone.layers.1.1.0.ffn.layers.1.weight',
        'decode_head.conv_seg.weight',
    ]
    got = blocks_of(names)
    assert [got[n] for n in names] == [
        ('backbone.layers.0.0', 0), ('backbone.layers.0.1.0', 1), ('backbone.layers.0.1.1', 2),
        ('backbone.layers.0.2', 3), ('backbone.layers.1.0', 4), ('backbone.layers.1.1.0', 5),
        ('decode_head.conv_seg', 6)]


def test_plain_classifier_root_is_the_model():
    names = ['conv1.weight', 'bn1.weight', 'layer1.0.conv1.weight', 'fc.weight', 'fc.bias']
    assert assign_blocks(names) == [('stem', 0), ('stem', 0), ('layer1.0', 1), ('fc', 2),
                                    ('fc', 2)]


def test_unknown_backbone_uses_generic_fallback():
    names = ['backbone.features.0.weight', 'backbone.features.0.bias',
             'backbone.features.3.weight', 'backbone.classifier.weight']
    assert assign_blocks(names) == [('backbone.features.0', 0), ('backbone.features.0', 0),
                                    ('backbone.features.3', 1), ('backbone.classifier', 2)]


def test_get_layer_index_callable_and_extra_rule():
    names = ['backbone.blk_b.w', 'backbone.blk_a.w', 'head.w']

    def by_letter(name):
        if name.startswith('backbone.blk_'):
            return name.rsplit('.', 1)[0], 'ab'.index(name.split('_')[1][0])
        return None

    assert assign_blocks(names, get_layer_index=by_letter) == [
        ('backbone.blk_b', 1), ('backbone.blk_a', 0), ('head', 2)]
    rule = ArchitectureRule('Toy', BlockPattern(r'blk_(?P<b>\d+)\.'))
    names = ['net.blk_2.w', 'net.blk_1.w']
    assert assign_blocks(names, rules=DEFAULT_RULES + (rule,)) == [('net.blk_2', 1),
                                                                   ('net.blk_1', 0)]


def test_dense_layer_ids_close_gaps():
    assert dense_layer_ids([3, 3, None, 7, 5]) == ([0, 0, None, 2, 1], 3)
    assert dense_layer_ids([None, None]) == ([None, None], 0)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'depth'.*'block', 'tensor'"):
        assign_blocks(['a.w'], strategy='depth')
    with pytest.raises(ValueError, match=r"\['a.w'\]"):
        assign_blocks(['a.w', 'a.w'])
