"""Settings and states that used to be silently wrong: each either does what was meant or
stops / warns naming the value and the fix (plain PyTorch, no mmengine)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD


def _params(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _grads(params, value=1.0):
    for p in params:
        if p.requires_grad:
            p.grad = torch.full_like(p, value)


# ----------------------------------------------------------------- gradual unfreezing
def test_unfrozen_tensor_is_reviewed_from_its_first_step():
    a, b, c = _params((2, 2), (2, 2), (2, 2))
    a.requires_grad_(False)  # frozen for the first steps
    pretrained_a = a.detach().clone()
    opt = DualOptSGD([a, b, c], lr=0.1, k_max=0.5)
    for _ in range(2):
        _grads([a, b, c])
        opt.step()
    assert torch.equal(a.detach(), pretrained_a)
    a.requires_grad_(True)
    _grads([a, b, c])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        opt.step()
    # a is index 0 of 3: level k_max = 0.5; theta_0 is its (still pretrained) value
    assert torch.equal(opt.state[a]['anchor'], pretrained_a)
    stepped = pretrained_a - 0.1
    torch.testing.assert_close(a.detach(), stepped - 0.5 * (stepped - pretrained_a))
    assert [r[1:3] for r in opt.review_levels()] == [(0, 3), (1, 3), (2, 3)]
    # b and c were trained with other levels: the change is said
    assert any('layer index changed' in str(w.message) for w in caught)


# ----------------------------------------------------------------- typos and bad values
@pytest.mark.parametrize('key,value,match', [
    ('k_unit', 'lr', "unknown k_unit 'lr'.*did you mean 'base_lr'"),
    ('anchor_dtype', 'int8', "anchor_dtype='int8' is not allowed"),
    ('base_lr', -1, 'base_lr=-1 must be >= 0'),
    ('mode', 'fine-tune', "did you mean 'finetune'"),
])
def test_group_values_set_after_construction_are_checked(key, value, match):
    params = _params((3, 3), (3,))
    opt = DualOptAdamW(params, lr=1e-3)
    _grads(params)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.param_groups[0][key] = value  # a scheduler, custom_keys or user code
    _grads(params)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))


@pytest.mark.parametrize('key,close', [('k_maxx', 'k_max'), ('gama', 'gamma'),
                                       ('layer_idx', 'layer_id'), ('k_mim', 'k_min')])
def test_misspelt_group_key_is_refused(key, close):
    with pytest.raises(ValueError, match=f"unknown key '{key}': did you mean '{close}'"):
        DualOptSGD([{'params': _params((2, 2)), key: 0.1}], lr=0.1)


def test_foreign_group_keys_are_accepted():
    DualOptSGD([{'params': _params((2, 2)), 'initial_lr': 0.1, 'param_name': 'x',
                 'lr_mult': 1.0, 'decay_mult': 0.0}], lr=0.1)


# ----------------------------------------------------------------- manual warm-up
def test_manual_warmup_is_detected_and_base_lr_fixes_it():
    peak = 1e-3
    params = _params((4, 4))
    opt = DualOptAdam(params, lr=peak * 0.01)  # the authors' loop: lr set by hand
    _grads(params)
    opt.step()
    assert opt.param_groups[0]['base_lr'] == pytest.approx(peak * 0.01)
    opt.param_groups[0]['lr'] = peak
    _grads(params)
    with pytest.warns(UserWarning, match=r'above its base_lr=1e-05.*Pass base_lr=<the peak lr>'):
        opt.step()
    # with the peak given, no warning and lambda = lr / base_lr * k_max
    params = _params((4, 4))
    opt = DualOptAdam(params, lr=peak * 0.01, base_lr=peak)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for lr in (peak * 0.01, peak * 0.5, peak):
            opt.param_groups[0]['lr'] = lr
            _grads(params)
            opt.step()


# ----------------------------------------------------------------- atomic refusal
def test_refused_step_changes_nothing_with_reference():
    params = _params((3, 3), (3, 3), (3, 3), (3, 3))
    opt = DualOptAdam([{'params': params[:2]}, {'params': params[2:]}], lr=1e-3,
                      reference=True, k_unit='base_lr', base_lr=1e-3, k_max=0.01)
    _grads(params)
    opt.step()
    assert [g['reference_step'] for g in opt.param_groups] == [1, 1]
    opt.param_groups[1]['lr'] = 0.2  # lambda = 200 * 0.01 > 1 in the second group only
    before = [p.detach().clone() for p in params]
    _grads(params)
    with pytest.raises(ValueError, match='lambda = 2 > 1'):
        opt.step()
    assert [g['reference_step'] for g in opt.param_groups] == [1, 1]
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(float(opt.state[p]['step']) == 1 for p in params)


# ----------------------------------------------------------------- add_param_group, resume
def test_add_param_group_moves_levels_and_says_so():
    a, b, c = _params((2, 2), (2, 2), (2, 2))
    opt = DualOptSGD([a, b], lr=0.1, k_max=0.01)
    _grads([a, b])
    opt.step()
    assert [r[3] for r in opt.review_levels()] == [0.01, 0.0]
    opt.add_param_group({'params': [c]})
    with pytest.warns(UserWarning, match=r'layer index changed.*0 -> 0.005'):
        assert [r[3] for r in opt.review_levels()] == [0.01, 0.005, 0.0]


def test_explicit_layer_ids_do_not_move_on_add_param_group():
    a, b, c = _params((2, 2), (2, 2), (2, 2))
    opt = DualOptSGD([{'params': [a], 'layer_id': 0}, {'params': [b], 'layer_id': 1}],
                     lr=0.1, num_layers=3)
    _grads([a, b])
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        opt.add_param_group({'params': [c], 'layer_id': 2})
        assert [r[3] for r in opt.review_levels()] == [0.01, 0.005, 0.0]


def test_resume_keeps_saved_k_max_and_says_so():
    params = _params((2, 2))
    opt = DualOptSGD(params, lr=0.1, k_max=0.01)
    _grads(params)
    opt.step()
    saved = opt.state_dict()
    resumed = DualOptSGD(params, lr=0.1, k_max=0.02)
    with pytest.warns(UserWarning, match=r'k_max=0.01 in the checkpoint, 0.02 now'):
        resumed.load_state_dict(saved)
    assert resumed.param_groups[0]['k_max'] == 0.01


def _constructor_groups(backbone, head):
    """Groups as DualOptOptimWrapperConstructor writes them."""
    return [{'params': [backbone], 'param_name': 'backbone.conv.weight', 'layer_id': 0,
             'num_layers': 1, 'mode': 'finetune'},
            {'params': [head], 'param_name': 'head.fc.weight', 'mode': 'none'}]


def test_checkpoint_of_torch_adamw_keeps_review_keys_and_refuses_mid_training_anchor():
    backbone, head = _params((3, 3), (2, 3))
    stock = torch.optim.AdamW([{'params': [backbone]}, {'params': [head]}], lr=1e-3)
    _grads([backbone, head])
    stock.step()  # a stock run in progress: the weights are no longer the pretrained ones
    saved = stock.state_dict()

    opt = DualOptAdamW(_constructor_groups(backbone, head), lr=1e-3)
    opt.load_state_dict(saved)
    assert opt.param_groups[1]['mode'] == 'none'
    assert opt.param_groups[0]['layer_id'] == 0
    assert opt.param_groups[0]['param_name'] == 'backbone.conv.weight'
    _grads([backbone, head])
    with pytest.raises(RuntimeError, match=r"'backbone.conv.weight'.*no theta_0.*"
                                           r'WeightRollbackHook'):
        opt.step()
    assert opt.capture_anchors() == 1  # on purpose: anchor to the current weights
    opt.step()


def test_resume_with_a_resized_head_fails_before_the_first_step():
    backbone, head = _params((3, 3), (2, 3))
    opt = DualOptAdamW(_constructor_groups(backbone, head), lr=1e-3)
    _grads([backbone, head])
    opt.step()
    saved = opt.state_dict()
    new_backbone, new_head = _params((3, 3), (3, 3))  # 2 -> 3 classes
    resumed = DualOptAdamW(_constructor_groups(new_backbone, new_head), lr=1e-3)
    with pytest.raises(ValueError, match=r"'exp_avg' of shape \(2, 3\) for 'head.fc.weight' "
                                         r'\(param group 1\), whose shape is now \(3, 3\)'):
        resumed.load_state_dict(saved)


# ----------------------------------------------------------------- names in errors
def test_errors_name_the_tensor():
    with pytest.raises(ValueError, match="complex.*'head.fc.weight'"):
        DualOptAdam([{'params': [torch.zeros(2, dtype=torch.complex64, requires_grad=True)],
                      'param_name': 'head.fc.weight'}])
    embedding = nn.Embedding(5, 2, sparse=True)
    opt = DualOptAdam([{'params': [embedding.weight], 'param_name': 'embed.weight'}])
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse gradients \('embed.weight'"):
        opt.step()


# ----------------------------------------------------------------- sparse SGD
@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_sgd_sparse_gradients_match_torch_then_review(momentum):
    torch.manual_seed(0)
    ours, theirs = nn.Embedding(10, 3, sparse=True), nn.Embedding(10, 3, sparse=True)
    theirs.load_state_dict(ours.state_dict())
    pretrained = ours.weight.detach().clone()
    opt = DualOptSGD(ours.parameters(), lr=0.1, momentum=momentum, k_max=0.0)
    ref = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum)
    for step in range(3):
        index = torch.tensor([step, step + 2, 7])
        for module, optimizer in ((ours, opt), (theirs, ref)):
            optimizer.zero_grad()
            module(index).pow(2).sum().backward()
            assert module.weight.grad.is_sparse
            optimizer.step()
        assert torch.equal(ours.weight, theirs.weight)
    if momentum:
        return
    # with a level, the review acts on the dense parameter: rows without gradient too
    opt.param_groups[0]['k_max'] = 0.5
    opt.zero_grad()
    ours(torch.tensor([1])).sum().backward()
    stepped = ours.weight.detach().clone()
    stepped[1] -= 0.1  # d(sum)/d(row 1) = 1
    opt.step()
    assert torch.equal(opt.state[ours.weight]['anchor'], pretrained)
    torch.testing.assert_close(ours.weight.detach(), stepped - 0.5 * (stepped - pretrained))


def test_mmengine_style_groups_without_layer_ids_are_named():
    """Eight or more one-tensor groups without layer_id: what mmengine's constructors build
    when only the optimizer type is switched (layer-decay configs): said once."""
    params = _params(*[(2, 2)] * 8)
    opt = DualOptSGD([{'params': [p]} for p in params], lr=0.1)
    _grads(params)
    with pytest.warns(UserWarning, match=r"8 param groups of one tensor each without layer_id"
                                         r".*DualOptOptimWrapperConstructor"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        opt.step()
