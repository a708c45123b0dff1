"""DualOptOptimWrapperConstructor on a toy detector: literal groups (layer, level, lr, wd, mode)."""
import logging

import pytest
import torch
from engine_toys import BACKBONE_NAMES, HEAD_NAMES, ToyDetector
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper

import dualopt_mm.engine  # noqa: F401  (registers the constructor)
from dualopt_mm.engine.report import level_rows
from dualopt_mm.optim import DualOptAdamW, DualOptSGD

SGD = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)
STEM, L10, L11, L20 = 'backbone.stem', 'backbone.layer1.0', 'backbone.layer1.1', 'backbone.layer2.0'
BACKBONE_BLOCKS = [STEM] * 3 + [L10] * 3 + [L11] * 3 + [L20] * 6


def build(model=None, optimizer=SGD, **paramwise_cfg):
    cfg = dict(constructor='DualOptOptimWrapperConstructor', optimizer=dict(optimizer))
    if paramwise_cfg:
        cfg['paramwise_cfg'] = paramwise_cfg
    wrapper = build_optim_wrapper(model if model is not None else ToyDetector(), cfg)
    return wrapper.optimizer


def table(optimizer):
    """(name, block, layer_id, num_layers, level, lr, weight_decay, mode) per group."""
    rows = level_rows(optimizer.param_groups, optimizer.defaults)
    return [(r['name'], r['block'], r['layer_id'], r['num_layers'],
             None if r['level'] is None else round(r['level'], 8), r['lr'],
             r['weight_decay'], r['mode']) for r in rows]


def test_default_finetune_block_index_literal():
    optimizer = build()
    assert type(optimizer) is DualOptSGD  # torch SGD swapped, its kwargs kept
    assert optimizer.defaults['momentum'] == 0.9
    assert optimizer.defaults['mode'] == 'finetune'
    got = table(optimizer)
    assert [r[0] for r in got] == BACKBONE_NAMES + HEAD_NAMES
    assert got[0] == ('backbone.conv1.weight', STEM, 0, 4, 0.01, 0.1, 1e-4, 'finetune')
    assert got[2] == ('backbone.bn1.bias', STEM, 0, 4, 0.01, 0.1, 1e-4, 'finetune')
    assert got[3] == ('backbone.layer1.0.conv1.weight', L10, 1, 4, 0.00666667, 0.1, 1e-4,
                      'finetune')
    assert got[8] == ('backbone.layer1.1.bn1.bias', L11, 2, 4, 0.00333333, 0.1, 1e-4,
                      'finetune')
    assert got[14] == ('backbone.layer2.0.downsample.1.bias', L20, 3, 4, 0.0, 0.1, 1e-4,
                       'finetune')
    assert got[15] == ('neck.weight', 'neck', None, None, None, 0.1, 1e-4, 'none')
    assert got[18] == ('head.bias', 'head', None, None, None, 0.1, 1e-4, 'none')
    assert [r[1] for r in got[:15]] == BACKBONE_BLOCKS
    # param_name in every group, torch's param_names list in none (add_param_group stays free)
    assert all('param_name' in g and 'param_names' not in g for g in optimizer.param_groups)
    optimizer.add_param_group({'params': [torch.nn.Parameter(torch.ones(2))], 'mode': 'none'})
    # the optimizer applies exactly these levels
    levels = [round(k, 8) if i is not None else None
              for _, i, _, k in optimizer.review_levels()]
    assert levels[:16] == [r[4] for r in got[:16]]


def test_tensor_index_is_reference_order():
    got = table(build(dualopt=dict(layer_index='tensor', k_max=0.014)))
    assert [r[2] for r in got[:15]] == list(range(15))
    assert {r[3] for r in got[:15]} == {15}
    assert got[0][4] == 0.014 and got[7][4] == 0.007 and got[14][4] == 0.0
    assert got[1][1] == 'backbone.bn1.weight'  # each tensor is its own block


def test_composes_with_default_constructor_rules():
    got = table(build(norm_decay_mult=0.0, bias_decay_mult=0.5,
                      custom_keys={'head': dict(lr_mult=0.1, decay_mult=2.0)}))
    by_name = {r[0]: r for r in got}
    assert by_name['backbone.bn1.weight'][5:7] == (0.1, 0.0)  # norm_decay_mult
    assert by_name['backbone.conv1.weight'][5:7] == (0.1, 1e-4)
    assert by_name['neck.bias'][5:7] == (0.1, 5e-5)  # bias_decay_mult
    assert by_name['head.weight'][5:7] == (pytest.approx(0.01), 2e-4)  # custom_keys
    assert by_name['head.weight'][7] == 'none'
    assert by_name['backbone.layer1.0.bn1.weight'][2:5] == (1, 4, 0.00666667)


def test_custom_keys_mode_overrides():
    optimizer = build(custom_keys={'neck': dict(mode='finetune'),
                                   'layer2': dict(mode='none')})
    got = {r[0]: r for r in table(optimizer)}
    # layer2 leaves the reviewed set, the neck joins it after layer1.1: 4 layers again
    assert got['backbone.layer2.0.conv1.weight'][2:5] == (None, None, None)
    assert got['neck.weight'][1:5] == ('neck', 3, 4, 0.0)
    assert got['backbone.layer1.1.conv1.weight'][2:5] == (2, 4, 0.00333333)
    assert all(g['mode_auto'] is False for g in optimizer.param_groups
               if g['param_name'].startswith(('neck', 'backbone.layer2')))


def test_frozen_tensors_are_not_indexed():
    model = ToyDetector()
    for p in list(model.backbone.conv1.parameters()) + list(model.backbone.bn1.parameters()):
        p.requires_grad_(False)
    got = table(build(model))
    assert [r[0] for r in got] == BACKBONE_NAMES[3:] + HEAD_NAMES
    assert got[0][1:5] == (L10, 0, 3, 0.01)
    assert got[-5][1:5] == (L20, 2, 3, 0.0)


def test_scratch_mode_reviews_everything_and_skips_1d():
    got = table(build(dualopt=dict(mode='scratch', k_max=0.05)))
    assert all(r[7] == 'scratch' for r in got)
    assert [r[2] for r in got] == [0, 0, 0, 1, 1, 1, 2, 2, 2] + [3] * 6 + [4, 4, 5, 5]
    assert got[0][4] == 0.05 and got[15][4] == 0.01 and got[17][4] == 0.0
    assert got[1][4] is None and got[16][4] is None  # 1-d tensors: skip_1d defaults to True


def test_pretrained_rules():
    # a Pretrained init_cfg marks its module (here the backbone); 'all' and prefixes
    model = ToyDetector(backbone_init_cfg=dict(type='Pretrained', checkpoint='unused.pth'))
    optimizer = build(model)
    assert [g['mode'] for g in optimizer.param_groups] == ['finetune'] * 15 + ['none'] * 4
    assert all(g['mode_auto'] for g in optimizer.param_groups)
    got = table(build(dualopt=dict(pretrained='all')))
    assert [r[2] for r in got[15:]] == [4, 4, 5, 5]
    got = table(build(dualopt=dict(pretrained=['backbone.layer1.', 'head'])))
    assert [r[2] for r in got] == [None] * 3 + [0] * 3 + [1] * 3 + [None] * 8 + [2, 2]


def test_adamw_swap_keeps_kwargs_and_no_swap_keeps_torch():
    optimizer = build(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.8, 0.9),
                                     weight_decay=0.05),
                      dualopt=dict(k_max=0.02, gamma=2.0))
    assert type(optimizer) is DualOptAdamW
    assert optimizer.defaults['betas'] == (0.8, 0.9)
    assert optimizer.defaults['k_max'] == 0.02 and optimizer.defaults['gamma'] == 2.0
    got = table(optimizer)
    assert got[3][4] == round(0.02 * (2 / 3) ** 2, 8)

    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        optimizer = build(dualopt=dict(swap_optimizer=False, k_max=0.02))
    finally:
        logger.removeHandler(handler)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]['k_max'] == 0.02  # carried for WeightRollbackHook
    assert 'k_max' not in optimizer.param_groups[-1]  # only reviewed groups carry it
    assert any('WeightRollbackHook' in r.getMessage() for r in records)


def test_dualopt_type_given_directly_and_mode_from_optimizer():
    optimizer = build(optimizer=dict(SGD, type='DualOptSGD', mode='scratch'))
    assert type(optimizer) is DualOptSGD
    assert {g['mode'] for g in optimizer.param_groups} == {'scratch'}


@pytest.mark.parametrize('paramwise_cfg, message', [
    (dict(dualopt=dict(mode='rollback')), "unknown mode 'rollback'"),
    (dict(dualopt=dict(layer_index='depth')), "'depth'.*'block', 'tensor'"),
    (dict(dualopt=dict(pretrained='neck')), "'neck'.*'auto', 'backbone', 'all'"),
    (dict(dualopt=dict(kmax=0.1)), r"\['kmax'\]"),
    (dict(dualopt=dict(gamma=0.0)), 'gamma=0.0 must be > 0'),
    (dict(dualopt=dict(k_min=-0.1)), 'k_min=-0.1 is negative'),
    (dict(custom_keys={'neck': dict(mode='on')}), "unknown mode 'on'"),
])
def test_bad_options_raise_naming_the_value(paramwise_cfg, message):
    with pytest.raises(ValueError, match=message):
        build(**paramwise_cfg)


def test_conflicting_values_raise():
    with pytest.raises(ValueError, match='k_max is given twice'):
        build(optimizer=dict(SGD, type='DualOptSGD', k_max=0.1), dualopt=dict(k_max=0.2))


def test_flat_decay_mult_and_shared_weights():
    got = {r[0]: r for r in table(build(flat_decay_mult=0.0))}
    assert got['backbone.bn1.bias'][6] == 0.0 and got['head.bias'][6] == 0.0
    assert got['backbone.conv1.weight'][6] == 1e-4
    model = ToyDetector()
    model.tied = torch.nn.Linear(8, 2)
    model.tied.weight = model.head.weight  # a shared tensor, visited twice by add_params
    with pytest.raises(ValueError, match=r"\['head.weight'\].*bypass_duplicate=True"):
        build(model)
    got = table(build(model, bypass_duplicate=True))
    assert [r[0] for r in got][-3:] == ['head.weight', 'head.bias', 'tied.bias']
