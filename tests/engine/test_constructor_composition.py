"""The constructor keeps what a config means: layer-decay constructors (lr and weight decay per
tensor bit for bit), levels that follow the lr multipliers, pretrained or from scratch, typos.

Real upstream configs, models at random init (no weights read); toy models where a literal
number is the point.
"""
import logging

import pytest
import torch
from engine_runner import make_toy_runner, toy_model
from engine_toys import ToyDetector
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.engine.pretrained import is_pretrained_init, pretrained_init_prefixes
from dualopt_mm.optim.levels import layer_level

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from upstream_walk import compare, config_root, differences  # noqa: E402


class LogRecords(logging.Handler):

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def text(self, level=logging.INFO):
        return '\n'.join(r.getMessage() for r in self.records if r.levelno >= level)


@pytest.fixture
def log_records():
    handler = LogRecords()
    yield handler
    for logger in MMLogger._instance_dict.values():
        logger.removeHandler(handler)


# (package, config, constructor recognised, a tensor, its stock lr)
LAYER_DECAY = {
    'mmdet_convnext_cascade': (
        'mmdet',
        'convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
        'mmdet.LearningRateDecayOptimizerConstructor',
        'backbone.stages.1.1.depthwise_conv.weight', 2e-4 * 0.7**5),  # 3.36e-05
    'mmseg_beit': (
        'mmseg', 'beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
        'mmseg.LayerDecayOptimizerConstructor', 'backbone.layers.0.attn.qkv.weight',
        3e-5 * 0.9**12),
    'mmpretrain_vit_mae_finetune': (
        'mmpretrain', 'mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py',
        'mmpretrain.LearningRateDecayOptimWrapperConstructor',
        'backbone.layers.0.attn.qkv.weight', None),
}


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=pytest.mark.slow) if c != 'mmdet_convnext_cascade' else c
    for c in sorted(LAYER_DECAY)])
def test_layer_decay_configs_keep_lr_and_weight_decay_per_tensor(case, tmp_path, log_records):
    package, path, constructor, tensor, stock_lr = LAYER_DECAY[case]
    result = compare(f'{config_root(package)}/{path}', str(tmp_path), log_records)
    assert differences(result) == []  # every tensor: lr and weight decay bit for bit
    assert len({lr for lr, _ in result['stock'].values()}) > 5  # the decay is really there
    assert 0.0 in {wd for _, wd in result['stock'].values()}  # and its no-decay rules
    assert f'lr / weight decay by {constructor}' in log_records.text()
    groups = {g['param_name']: g for g in result['groups']}
    if stock_lr is not None:
        assert groups[tensor]['lr'] == pytest.approx(stock_lr, rel=1e-12)
    # the review gets the block index and the pretrained / new split
    reviewed = [g for g in result['groups'] if g['mode'] != 'none']
    assert {g['param_name'].split('.')[0] for g in reviewed} == {'backbone'}
    assert all(g['mode'] == 'none' for g in result['groups']
               if not g['param_name'].startswith('backbone.'))
    # one level per block, not per tensor (ConvNeXt-T: the 8 depths of mmpretrain's
    # get_layer_depth; ViT-B: 14)
    num_layers = {g['num_layers'] for g in reviewed}
    assert num_layers == {len({g['block'] for g in reviewed})}
    assert 6 < num_layers.pop() < len(reviewed) / 5
    # levels follow each tensor's lr: k_i scaled by lr / optimizer lr (k_unit='base_lr')
    optimizer = result['optimizer']
    base_lr = result['runner'].cfg.optim_wrapper.optimizer.lr
    levels = {id(p): (i, n, k) for p, i, n, k in optimizer.review_levels()}
    group = groups[tensor]
    layer_id, num, level = levels[id(group['params'][0])]
    ratio = group['lr'] / base_lr
    assert ratio < 1
    assert level == pytest.approx(ratio * layer_level(layer_id, num, k_max=0.01), rel=1e-12)


def test_levels_follow_lr_mult_and_lambda_is_proportional_to_lr():
    """k_unit='base_lr': lambda = lr_group / lr_optimizer * k_i, measured on one real step."""
    model = toy_model()
    optimizer = build_optim_wrapper(model, dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.0, weight_decay=0.0),
        paramwise_cfg=dict(custom_keys={'backbone.layer1': dict(lr_mult=0.1)},
                           dualopt=dict(mode='finetune', pretrained='backbone')))).optimizer
    groups = {g['param_name']: g for g in optimizer.param_groups}
    stem, slow = groups['backbone.conv1.weight'], groups['backbone.layer1.0.conv1.weight']
    assert slow['lr'] == pytest.approx(0.01) and slow['lr_ratio'] == pytest.approx(0.1)
    # the stem (layer 0 of 4) at full lr: k = 0.01; layer1.0 (layer 1) at lr x 0.1
    assert stem['k_max'] == 0.01 and slow['k_max'] == pytest.approx(0.001)
    optimizer.capture_anchors()
    anchors = {n: g['params'][0].detach().clone() for n, g in groups.items()}
    with torch.no_grad():
        for g in optimizer.param_groups:
            g['params'][0].add_(1.0)
            g['params'][0].grad = torch.zeros_like(g['params'][0])
    optimizer.step()  # zero gradient: only the review moves the weights
    for name, expected in (('backbone.conv1.weight', 0.01),
                           ('backbone.layer1.0.conv1.weight', 0.1 * 0.01 * (1 - 1 / 3))):
        moved = anchors[name] + 1.0 - groups[name]['params'][0].detach()
        assert moved.mean().item() == pytest.approx(expected, rel=1e-4)  # lambda * (1.0)


def test_pretrained_init_cfg_without_type_is_recognised():
    """mmdet's PVT takes init_cfg=dict(checkpoint=...) without type='Pretrained'."""
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    assert is_pretrained_init(dict(checkpoint='pvt_tiny.pth'))
    assert not is_pretrained_init(dict(type='Kaiming', layer='Conv2d'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(dict(type='PyramidVisionTransformerV2', embed_dims=32,
                                     num_layers=[1, 1, 1, 1],
                                     init_cfg=dict(checkpoint='pvt_v2_b0.pth')))
    model = torch.nn.Module()
    model.backbone = backbone
    assert pretrained_init_prefixes(model) == ['backbone.']


def test_no_pretrained_weights_anywhere_runs_in_scratch_mode(tmp_path, log_records):
    runner = make_toy_runner(str(tmp_path / 'scratch'), hooks=[])
    runner.logger.addHandler(log_records)
    optimizer = runner.build_optim_wrapper(runner.optim_wrapper).optimizer
    assert {g['mode'] for g in optimizer.param_groups} == {'scratch'}
    assert optimizer.defaults['k_unit'] == 'absolute'
    assert optimizer.defaults['k_max'] == 1e-4  # the config's weight decay
    assert "no pretrained weights are configured" in log_records.text(logging.WARNING)
    # with load_from the same config fine-tunes the backbone
    path = str(tmp_path / 'weights.pth')
    torch.save(dict(state_dict=toy_model(seed=1).state_dict()), path)
    runner = make_toy_runner(str(tmp_path / 'finetune'), hooks=[], load_from=path)
    optimizer = runner.build_optim_wrapper(runner.optim_wrapper).optimizer
    modes = [g['mode'] for g in optimizer.param_groups]
    assert modes == ['finetune'] * 15 + ['none'] * 4
    assert optimizer.defaults['k_max'] == 0.01


def test_explicit_finetune_without_pretrained_weights_warns(tmp_path, log_records):
    runner = make_toy_runner(str(tmp_path / 'run'), hooks=[],
                             paramwise_cfg=dict(dualopt=dict(mode='finetune')))
    runner.logger.addHandler(log_records)
    optimizer = runner.build_optim_wrapper(runner.optim_wrapper).optimizer
    assert {g['mode'] for g in optimizer.param_groups} == {'finetune', 'none'}
    warning = log_records.text(logging.WARNING)
    assert "mode='finetune' but no pretrained weights are configured" in warning
    assert 'random initialisation' in warning and "mode='scratch'" in warning


@pytest.mark.parametrize('paramwise_cfg, message', [
    (dict(dualopt=dict(pretrained=['backbon.'])),
     r"prefix 'backbon\.' matches no trainable tensor \(did you mean 'backbone\.'"),
    (dict(custom_keys={'neck': dict(k_maxx=0.02)}),
     r"custom_keys\['neck'\] has the unknown key 'k_maxx' \(did you mean 'k_max'\?\)"),
    (dict(custom_keys={'head': dict(lr_mul=0.1)}),
     r"unknown key 'lr_mul' \(did you mean 'lr_mult'\?\)"),
    (dict(norm_decay_mul=0.0), r"'norm_decay_mul' \(did you mean 'norm_decay_mult'\?\).*"
                               r"base_constructor"),
    (dict(dualopt=dict(k_maxx=0.1)), r"did you mean 'k_max'"),
])
def test_typos_are_refused_with_the_close_match(paramwise_cfg, message):
    with pytest.raises(ValueError, match=message):
        build_optim_wrapper(ToyDetector(), dict(
            constructor='DualOptOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=paramwise_cfg))


def test_custom_keys_may_carry_optimizer_kwargs_and_far_keys():
    optimizer = build_optim_wrapper(ToyDetector(), dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(custom_keys={'head': dict(momentum=0.5, note='kept')}))).optimizer
    head = next(g for g in optimizer.param_groups if g['param_name'] == 'head.weight')
    assert head['momentum'] == 0.5 and head['note'] == 'kept'


def test_mmseg_force_default_constructor_is_recognised_and_kept():
    """mmseg's ForceDefaultOptimWrapperConstructor (VPD configs): ``force_default_settings``
    applies the bias / norm rules on top of custom_keys; the switch keeps it per tensor."""
    import mmseg.engine  # noqa: F401
    from mmengine.registry import DefaultScope
    paramwise_cfg = dict(custom_keys={'backbone': dict(lr_mult=0.1)}, norm_decay_mult=0.0,
                         force_default_settings=True)
    optimizer = dict(type='AdamW', lr=1e-3, weight_decay=0.05)
    model = ToyDetector()
    with DefaultScope.overwrite_default_scope('mmseg'):
        stock = build_optim_wrapper(model, dict(
            constructor='ForceDefaultOptimWrapperConstructor', optimizer=optimizer,
            paramwise_cfg=paramwise_cfg)).optimizer
        switched = build_optim_wrapper(model, dict(
            constructor='DualOptOptimWrapperConstructor', optimizer=optimizer,
            paramwise_cfg=paramwise_cfg)).optimizer
    stock_t = {id(p): (g['lr'], g['weight_decay']) for g in stock.param_groups
               for p in g['params']}
    switched_t = {id(g['params'][0]): (g['lr'], g['weight_decay'])
                  for g in switched.param_groups}
    assert stock_t == switched_t
    bn = model.backbone.bn1.weight  # custom key *and* the norm rule: force_default_settings
    assert switched_t[id(bn)] == (pytest.approx(1e-4), 0.0)
