"""A DualOpt optimizer given the param groups of a layer-decay constructor (the type line alone,
no ``DualOptOptimWrapperConstructor``) reviews the backbone only, indexed by the constructor's
depths, and says so once; plain PyTorch use and hand-written groups stay silent and unchanged.

The first tests imitate the groups the constructors write (keys read off their installed
sources); the last build the real constructors on real models from installed upstream configs.
"""
import os.path as osp
import warnings
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from dualopt_mm.optim import DualOptAdamW, DualOptSGD
from dualopt_mm.optim.foreign_groups import (
    CONSTRUCTOR_LINE,
    MARKER,
    MIN_PER_TENSOR_GROUPS,
    MMPRETRAIN,
    MMSEG_MMDET,
    ForeignParamGroupsWarning,
)
from dualopt_mm.optim.levels import layer_level

# name -> (lr-decay depth, shape): a backbone of depths 0..3 (3 also holds its output norm),
# a neck and a head at the deepest depth, as the constructors place them
TENSORS = {
    'backbone.stem.weight': (0, (4, 3)),
    'backbone.stages.0.weight': (1, (4, 4)),
    'backbone.stages.0.bias': (1, (4,)),
    'backbone.stages.1.weight': (2, (4, 4)),
    'backbone.norm3.weight': (3, (4,)),
    'neck.conv.weight': (3, (4, 4)),
    'head.fc.weight': (3, (2, 4)),
    'head.fc.bias': (3, (2,)),
}
BACKBONE = [n for n in TENSORS if n.startswith('backbone.')]


def _params(seed: int = 0) -> Dict[str, nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {n: nn.Parameter(torch.randn(*shape, generator=gen))
            for n, (_, shape) in TENSORS.items()}


def mmseg_groups(params: Dict[str, nn.Parameter], lr: float = 1e-3) -> List[dict]:
    """Groups as mmdet's / mmseg's LearningRateDecayOptimizerConstructor writes them."""
    groups: Dict[str, dict] = {}
    for name, p in params.items():
        depth = TENSORS[name][0]
        decay = 'no_decay' if p.ndim == 1 else 'decay'
        key = f'layer_{depth}_{decay}'
        scale = 0.9 ** (4 - depth)
        group = groups.setdefault(key, dict(
            weight_decay=0.0 if decay == 'no_decay' else 0.05, params=[], param_names=[],
            lr_scale=scale, group_name=key, lr=scale * lr))
        group['params'].append(p)
        group['param_names'].append(name)
    return list(groups.values())


def mmpretrain_groups(params: Dict[str, nn.Parameter], lr: float = 1e-3) -> List[dict]:
    """Groups as mmpretrain's LearningRateDecayOptimWrapperConstructor writes them."""
    return [dict(params=[p], weight_decay=0.05, lr=lr * 0.9 ** (4 - TENSORS[n][0]),
                 layer_id=TENSORS[n][0], param_name=n) for n, p in params.items()]


def _resolve(optimizer) -> Tuple[Dict[int, tuple], list]:
    """``review_levels()`` by tensor id, and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        rows = {id(p): (layer_id, num_layers, level)
                for p, layer_id, num_layers, level in optimizer.review_levels()}
    return rows, caught


def _step(optimizer, params) -> list:
    for p in params.values():
        p.grad = torch.ones_like(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        optimizer.step()
    return caught


def _foreign(caught) -> List[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ForeignParamGroupsWarning)]


# ----------------------------------------------------------------- plain use: silent, unchanged
def test_plain_one_group_optimizer_does_not_warn():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = DualOptAdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        optimizer.step()
        optimizer.step()
    assert [str(w.message) for w in caught] == []
    # today's rule unchanged: the tensor-order index over all 4 tensors
    assert [(i, n) for _, i, n, _ in optimizer.review_levels()] == [(i, 4) for i in range(4)]
    assert MARKER not in optimizer.param_groups[0]


def test_named_parameters_and_hand_written_groups_do_not_warn():
    params = _params()
    named = DualOptAdamW(list(params.items()), lr=1e-3)  # torch's param_names, one group
    rows, caught = _resolve(named)
    assert caught == [] and all(i is not None for i, _, _ in rows.values())
    # per-group dicts by hand, names and layer ids included (fewer than a model's hundreds)
    groups = [dict(params=[params[n]], param_name=n, layer_id=TENSORS[n][0])
              for n in ('backbone.stem.weight', 'backbone.stages.1.weight', 'head.fc.weight')]
    by_hand = DualOptSGD(groups, lr=0.1)
    rows, caught = _resolve(by_hand)
    assert caught == []
    assert [rows[id(g['params'][0])][:2] for g in groups] == [(0, 4), (2, 4), (3, 4)]


def test_groups_with_a_mode_of_their_own_are_left_as_they_are():
    """Someone decided the review split (custom_keys mode=...): today's rules, no warning."""
    params = _params()
    groups = mmpretrain_groups(params)
    for group in groups:
        if not group['param_name'].startswith('backbone.'):
            group['mode'] = 'none'
    rows, caught = _resolve(DualOptAdamW(groups, lr=1e-3))
    assert caught == []
    assert [rows[id(params[n])][0] for n in BACKBONE] == [0, 1, 1, 2, 3]
    assert rows[id(params['head.fc.weight'])] == (None, None, 0.0)


# ----------------------------------------------------------------- imitated constructors
def test_mmseg_mmdet_layout_reviews_the_backbone_by_depth_and_says_so_once():
    params = _params()
    optimizer = DualOptAdamW(mmseg_groups(params), lr=1e-3)
    lrs = [(g['lr'], g['weight_decay']) for g in optimizer.param_groups]
    rows, caught = _resolve(optimizer)
    messages = _foreign(caught)
    assert len(messages) == 1
    message = messages[0]
    assert MMSEG_MMDET in message and CONSTRUCTOR_LINE in message
    assert 'the 5 backbone.* tensors only' in message
    assert '3 tensors it cannot place as pretrained stay unreviewed' in message
    assert 'neck.conv.weight' in message and 'head.fc.bias' in message
    # depths 0..3 of the backbone -> layer ids 0..3 of 4; norm3 shares the heads' groups
    expected = {'backbone.stem.weight': 0, 'backbone.stages.0.weight': 1,
                'backbone.stages.0.bias': 1, 'backbone.stages.1.weight': 2,
                'backbone.norm3.weight': 3}
    for name, p in params.items():
        layer_id, num_layers, level = rows[id(p)]
        if name in expected:
            assert (layer_id, num_layers) == (expected[name], 4), name
            assert level == pytest.approx(layer_level(expected[name], 4, k_max=0.01))
        else:
            assert (layer_id, num_layers, level) == (None, None, 0.0), name
    assert rows[id(params['backbone.stem.weight'])][2] == pytest.approx(0.01)  # k_max
    assert [(g['lr'], g['weight_decay']) for g in optimizer.param_groups] == lrs
    assert {g['mode'] for g in optimizer.param_groups} == {'finetune'}  # mode untouched
    # the step: anchors for the backbone only, never for the neck or the heads; no new warning
    assert _foreign(_step(optimizer, params)) == []
    assert _foreign(_step(optimizer, params)) == []
    assert {n for n, p in params.items() if 'anchor' in optimizer.state[p]} == set(BACKBONE)


def test_mmseg_mmdet_layout_resumes_silently_and_keeps_its_index():
    params = _params()
    optimizer = DualOptAdamW(mmseg_groups(params), lr=1e-3)
    _resolve(optimizer)
    _step(optimizer, params)
    saved = optimizer.state_dict()
    before = {id(p): row for p, *row in optimizer.review_levels()}

    resumed = DualOptAdamW(mmseg_groups(params), lr=1e-3)  # a fresh build, then resume
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        resumed.load_state_dict(saved)
    assert [str(w.message) for w in caught] == []  # no "review settings differ"
    rows, caught = _resolve(resumed)
    assert len(_foreign(caught)) == 1  # said again, once, in the new run
    assert {k: list(v) for k, v in rows.items()} == before


def test_a_group_added_later_leaves_the_adopted_index_alone():
    params = _params()
    optimizer = DualOptAdamW(mmseg_groups(params), lr=1e-3)
    before, _ = _resolve(optimizer)
    extra = nn.Parameter(torch.ones(3))
    optimizer.add_param_group(dict(params=[extra], param_names=['extra.weight'], mode='none'))
    rows, caught = _resolve(optimizer)
    assert _foreign(caught) == []
    assert rows.pop(id(extra)) == (None, None, 0.0)
    assert rows == before


def test_mmpretrain_layout_keeps_its_layer_id_and_leaves_the_heads_out():
    """mmpretrain writes ``layer_id`` (its lr-decay depth) into every group, the key DualOpt
    reads as its layer index: before, every tensor was indexed by it and the heads, at the
    deepest depth, were reviewed; now they are not, and num_layers comes from the backbone."""
    params = _params()
    optimizer = DualOptAdamW(mmpretrain_groups(params), lr=1e-3)
    rows, caught = _resolve(optimizer)
    messages = _foreign(caught)
    assert len(messages) == 1 and MMPRETRAIN in messages[0]
    assert 'the 5 backbone.* tensors only' in messages[0]
    for group in optimizer.param_groups:
        name = group['param_name']
        assert group['layer_id'] == TENSORS[name][0]  # kept: a resume compares equal
        if name.startswith('backbone.'):
            assert rows[id(group['params'][0])][:2] == (TENSORS[name][0], 4), name
            assert group['num_layers'] == 4
        else:
            assert rows[id(group['params'][0])] == (None, None, 0.0), name
            assert group['num_layers'] is None
    assert _foreign(_step(optimizer, params)) == []
    assert {n for n, p in params.items() if 'anchor' in optimizer.state[p]} == set(BACKBONE)


def test_a_short_mmpretrain_like_list_is_the_users():
    """Below MIN_PER_TENSOR_GROUPS groups, names and layer ids are taken as written."""
    params = _params()
    groups = mmpretrain_groups(params)[-MIN_PER_TENSOR_GROUPS + 1:]
    rows, caught = _resolve(DualOptAdamW(groups, lr=1e-3))
    assert caught == []
    assert rows[id(params['head.fc.weight'])][:2] == (3, 4)


def test_scratch_mode_keeps_every_tensor_with_the_constructor_depths():
    params = _params()
    optimizer = DualOptAdamW(mmseg_groups(params), lr=1e-3, mode='scratch', skip_1d=False)
    rows, caught = _resolve(optimizer)
    assert len(_foreign(caught)) == 1 and 'reviews every tensor' in _foreign(caught)[0]
    assert {n: rows[id(p)][:2] for n, p in params.items()} == {
        n: (depth, 4) for n, (depth, _) in TENSORS.items()}


# ----------------------------------------------------------------- real upstream constructors
# (package, config, constructor, trainable tensors, of which backbone.*, reviewed depths)
UPSTREAM = {
    'mmdet_convnext': (
        'mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py', MMSEG_MMDET,
        228, 186, 8),
    'mmseg_beit': (
        'mmseg', 'beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py', MMSEG_MMDET,
        246, 195, 13),
    'mmpretrain_mae': (
        'mmpretrain', 'mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py', MMPRETRAIN,
        152, 150, 14),
}


def _type_line_model(package: str, path: str, tmp_path) -> tuple:
    """The model of an upstream config (random init, nothing loaded), the config with
    ``optim_wrapper = dict(optimizer=dict(type='DualOptAdamW'))`` alone, and the stock one."""
    pytest.importorskip(package)
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.utils import import_modules_from_strings
    from upstream_walk import config_root

    import dualopt_mm.engine  # noqa: F401
    full = osp.join(config_root(package), path)
    child = tmp_path / 'type_line.py'
    child.write_text(f'_base_ = {full!r}\n'
                     "optim_wrapper = dict(optimizer=dict(type='DualOptAdamW'))\n")
    cfg, stock_cfg = Config.fromfile(str(child)), Config.fromfile(full)
    assert cfg.optim_wrapper.optimizer.type == 'DualOptAdamW'
    import_modules_from_strings((cfg.get('custom_imports') or {}).get('imports', []))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    return model, cfg, stock_cfg


def _optimizer(model, cfg):
    """The optimizer the config's constructor builds (AmpOptimWrapper as the plain wrapper)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    from upstream_walk import cpu_optim_wrapper
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return build_optim_wrapper(model, cpu_optim_wrapper(cfg.optim_wrapper)).optimizer


def _per_tensor(optimizer) -> Dict[int, tuple]:
    return {id(p): (g['lr'], g.get('weight_decay')) for g in optimizer.param_groups
            for p in g['params']}


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=pytest.mark.slow) if c != 'mmdet_convnext' else c
    for c in sorted(UPSTREAM)])
def test_real_layer_decay_constructors_under_the_type_line(case, tmp_path, monkeypatch):
    package, path, constructor, num_tensors, num_backbone, num_layers = UPSTREAM[case]
    model, cfg, stock_cfg = _type_line_model(package, path, tmp_path)
    optimizer, stock = _optimizer(model, cfg), _optimizer(model, stock_cfg)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n in names.values() if n.startswith('backbone.')}
    assert (len(names), len(backbone)) == (num_tensors, num_backbone)
    assert _per_tensor(optimizer) == _per_tensor(stock)  # lr / weight decay: the constructor's

    rows, caught = _resolve(optimizer)
    messages = _foreign(caught)
    assert len(messages) == 1 and constructor in messages[0] and CONSTRUCTOR_LINE in messages[0]
    reviewed = {names[i]: row for i, row in rows.items() if row[0] is not None}
    assert set(reviewed) == backbone  # every backbone tensor, nothing else
    assert {n for _, n, _ in reviewed.values()} == {num_layers}
    assert sorted({i for i, _, _ in reviewed.values()}) == list(range(num_layers))
    assert _foreign(_resolve(optimizer)[1]) == []  # once
    assert _per_tensor(optimizer) == _per_tensor(stock)

    # before: the same groups indexed without looking at their keys
    import dualopt_mm.optim.foreign_groups as foreign_groups
    monkeypatch.setattr(foreign_groups, 'read_layout', lambda groups, default_mode: None)
    before = _optimizer(model, cfg)
    old = {names[i]: row for i, row in _resolve(before)[0].items() if row[0] is not None}
    assert set(old) == set(names.values())  # the heads were reviewed too
    # mmdet / mmseg: one level per tensor; mmpretrain: its layer_id read as DualOpt's, the
    # heads at the deepest depth
    assert {n for _, n, _ in old.values()} == {
        num_tensors if constructor == MMSEG_MMDET else num_layers}
