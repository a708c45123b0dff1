"""Layer index rules on parameter-name lists, and the backbone's own definition on toy modules:
literal blocks and block indices."""
import pytest
import torch
import torch.nn as nn

from dualopt_mm.engine.layer_index import (
    DEFAULT_RULES,
    ArchitectureRule,
    BlockPattern,
    assign_blocks,
    dense_layer_ids,
    index_blocks,
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
    with pytest.raises(ValueError, match="'depth'.*'block', 'tensor', 'rules'"):
        assign_blocks(['a.w'], strategy='depth')
    with pytest.raises(ValueError, match=r"\['a.w'\]"):
        assign_blocks(['a.w', 'a.w'])


# -- the backbone's own definition (get_layer_depth-style toys; real ones in
#    test_layer_index_defined.py) --------------------------------------------------------------
class ToyViT(nn.Module):
    """mmpretrain-style: get_layer_depth(name, prefix) -> (depth, num_layers)."""

    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1))
        self.patch_embed = nn.Linear(2, 2)
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(layers))
        self.ln1 = nn.LayerNorm(2)

    def get_layer_depth(self, param_name, prefix=''):
        num_layers = len(self.layers) + 2
        name = param_name[len(prefix):]
        if not param_name.startswith(prefix) or name.startswith('ln1'):
            return num_layers - 1, num_layers
        if name.startswith('layers'):
            return int(name.split('.')[1]) + 1, num_layers
        return 0, num_layers


class Classifier(nn.Module):
    """mmpretrain's ImageClassifier shape: get_layer_depth without a prefix argument."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(2, 2)

    def get_layer_depth(self, param_name):
        return self.backbone.get_layer_depth(param_name, 'backbone.')


def names_of(model):
    return [n for n, _ in model.named_parameters()]


def test_backbone_definition_wins_over_the_rules():
    model = Classifier(ToyViT())
    names = names_of(model)
    index = index_blocks(names, model=model)
    assert list(zip(names, index.blocks)) == [
        ('backbone.cls_token', ('backbone.depth0', 0)),  # no single module holds depth 0
        ('backbone.patch_embed.weight', ('backbone.depth0', 0)),
        ('backbone.patch_embed.bias', ('backbone.depth0', 0)),
        ('backbone.layers.0.weight', ('backbone.layers.0', 1)),
        ('backbone.layers.0.bias', ('backbone.layers.0', 1)),
        ('backbone.layers.1.weight', ('backbone.layers.1', 2)),
        ('backbone.layers.1.bias', ('backbone.layers.1', 2)),
        ('backbone.layers.2.weight', ('backbone.layers.2', 3)),
        ('backbone.layers.2.bias', ('backbone.layers.2', 3)),
        ('backbone.ln1.weight', ('backbone.ln1', 4)),
        ('backbone.ln1.bias', ('backbone.ln1', 4)),
        ('head.weight', ('head', 5)),
        ('head.bias', ('head', 5)),
    ]
    # the classifier's own get_layer_depth (no prefix) is not a definition: its backbone's is
    assert index.by_module(names) == {'backbone': 'mmpretrain get_layer_depth',
                                      'head': 'generic'}
    assert index.refused == ()
    # the hand rules see the same names differently ('ViT': stem, layers, ln1 after)
    rules = index_blocks(names, 'rules', model=model)
    assert rules.by_module(names) == {'backbone': 'rule: ViT', 'head': 'generic'}
    assert rules.blocks[0] == ('backbone.stem', 0)
    # the user's callable still comes first
    custom = index_blocks(names, model=model,
                          get_layer_index=lambda n: ('mine', 0) if 'layers.1' in n else None)
    assert custom.sources[5:7] == ['get_layer_index'] * 2
    assert [b for b, _ in custom.blocks] == [b for b, _ in index.blocks[:5]] + ['mine'] * 2 + [
        b for b, _ in index.blocks[7:]]
    assert custom.sources[0] == 'mmpretrain get_layer_depth'


def test_frozen_and_missing_names_keep_the_upstream_depths():
    model = Classifier(ToyViT())
    names = [n for n in names_of(model) if not n.startswith(('backbone.cls', 'backbone.patch'))]
    index = index_blocks(names, model=model)
    assert [b for b, _ in index.blocks[:2]] == ['backbone.layers.0'] * 2
    assert dense_layer_ids([i for _, i in index.blocks])[1] == 5  # 3 layers, ln1, head


class OneDepth(ToyViT):
    def get_layer_depth(self, param_name, prefix=''):
        return 0, 1


class Undeclared(ToyViT):
    """Matches a prefix it does not have (mmpretrain 1.2's HiViT: 'layers' for 'blocks')."""

    def get_layer_depth(self, param_name, prefix=''):
        return (0 if 'patch_embed' in param_name else 11), 12


class NoTable(ToyViT):
    def get_layer_depth(self, param_name, prefix=''):
        raise NotImplementedError


@pytest.mark.parametrize('backbone, why', [
    (OneDepth(), 'backbone: mmpretrain get_layer_depth not used: it puts all 11 tensors at '
                 'one depth'),
    (Undeclared(), 'backbone: mmpretrain get_layer_depth not used: its parameters use 2 of the '
                   '12 depths it declares'),
    (NoTable(), 'backbone: mmpretrain get_layer_depth raised NotImplementedError'),
])
def test_a_definition_that_does_not_fit_falls_back_to_the_rules(backbone, why):
    model = Classifier(backbone)
    names = names_of(model)
    index = index_blocks(names, model=model)
    assert index.refused == (why,)
    assert index.by_module(names)['backbone'] == 'rule: ViT'
    assert index.blocks == index_blocks(names, 'rules').blocks


def test_timm_is_imported_only_for_a_module_with_group_matcher():
    """timm is optional: importing the index (and indexing a model without group_matcher)
    never imports it."""
    import subprocess
    import sys
    code = ('import sys, torch.nn as nn\n'
            'from dualopt_mm.engine.layer_index import index_blocks\n'
            'm = nn.Sequential(nn.Linear(2, 2))\n'
            'index_blocks([n for n, _ in m.named_parameters()], model=m)\n'
            "assert 'timm' not in sys.modules, 'timm imported'\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
