"""theta_0: lazily captured at a tensor's first step (not at construction, not later),
capture_anchors overrides it, the bf16 option halves its memory; GradScaler skips skip the
review; add_param_group re-resolves the index; review_levels reports."""
from __future__ import annotations

import pytest
import torch
from optim_reference import clone_params, make_params, set_grads
from torch_versions import needs_amp_grad_scaler

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD, layer_level


def test_anchor_is_value_at_first_step_not_construction() -> None:
    params = make_params([(3, 3), (3,)])
    opt = DualOptAdamW(params, lr=1e-2, k_max=0.1)
    with torch.no_grad():  # e.g. mmengine loads the pretrained weights after building it
        params[0].add_(1.0)
    pretrained = clone_params(params)
    assert len(opt.state) == 0  # nothing captured in __init__
    set_grads(params, 0, skip={1})
    opt.step()
    assert torch.equal(opt.state[params[0]]['anchor'], pretrained[0])
    assert params[1] not in opt.state
    for step in range(1, 5):  # tensor 1 gets its first gradient at step 1
        set_grads(params, step)
        opt.step()
    assert torch.equal(opt.state[params[0]]['anchor'], pretrained[0])  # not re-captured
    assert torch.equal(opt.state[params[1]]['anchor'], pretrained[1])  # its own first step


def test_capture_anchors_overrides_and_restricts() -> None:
    params = make_params([(3, 3), (2, 2), (3,)])
    opt = DualOptSGD([{'params': params[:2]}, {'params': params[2:], 'mode': 'none'}], lr=0.1)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    now = clone_params(params)
    assert opt.capture_anchors([params[1]]) == 1
    assert torch.equal(opt.state[params[1]]['anchor'], now[1])
    assert not torch.equal(opt.state[params[0]]['anchor'], now[0])
    assert opt.capture_anchors() == 2  # mode='none' tensors get no anchor
    assert torch.equal(opt.state[params[0]]['anchor'], now[0])
    assert 'anchor' not in opt.state[params[2]]
    with pytest.raises(ValueError, match='1 of the given tensors are not parameters'):
        opt.capture_anchors([torch.zeros(1)])


def test_no_anchor_in_scratch_none_or_skipped() -> None:
    params = make_params([(3, 3), (3,), (2, 2), (4,)])
    opt = DualOptAdam([{'params': params[:2], 'mode': 'scratch'},
                       {'params': params[2:3], 'mode': 'none'},
                       {'params': params[3:], 'skip_1d': True}], lr=1e-2)
    set_grads(params, 0)
    opt.step()
    assert all('anchor' not in opt.state[p] for p in params)
    # scratch skips 1-d tensors by default: one reviewed tensor in all
    assert [r[1] for r in opt.review_levels()] == [0, None, None, None]


def test_bf16_anchor_halves_memory() -> None:
    params = make_params([(64, 32), (32,)], dtype=torch.float32)
    full = DualOptAdamW(params, lr=1e-3)
    half = DualOptAdamW(clone_params(params), lr=1e-3, anchor_dtype='bfloat16')
    full.capture_anchors()
    half.capture_anchors()

    def nbytes(opt: torch.optim.Optimizer) -> int:
        return sum(s['anchor'].numel() * s['anchor'].element_size()
                   for s in opt.state.values())

    assert nbytes(half) * 2 == nbytes(full) == 4 * (64 * 32 + 32)
    for p_full, p_half in zip(full.param_groups[0]['params'], half.param_groups[0]['params']):
        a = half.state[p_half]['anchor']
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), p_full, rtol=2**-8, atol=0)


def test_bf16_anchor_pins_to_rounded_anchor() -> None:
    """With lambda = 1 the tensor lands on the bf16-rounded theta_0: the precision cost."""
    params = make_params([(8, 8)], dtype=torch.float32)
    theta0 = params[0].detach().clone()
    opt = DualOptSGD(params, lr=0.1, k_max=1.0, k_min=1.0, anchor_dtype=torch.bfloat16)
    set_grads(params, 0)
    opt.step()
    assert torch.equal(params[0], theta0.bfloat16().float())


@needs_amp_grad_scaler
@pytest.mark.parametrize('cls', [DualOptSGD, DualOptAdamW])
def test_grad_scaler_skip_skips_review(cls: type) -> None:
    """torch.amp.GradScaler does not call step() when grads are inf/NaN: the review lives in
    step(), so it is skipped too (no update, no review, no anchor captured)."""
    params = make_params([(3, 3)], dtype=torch.float32)
    before = clone_params(params)
    opt = cls(params, lr=0.1, k_max=0.5)
    scaler = torch.amp.GradScaler('cpu', init_scale=4.0)
    scaler.scale(params[0].sum() * float('inf')).backward()  # an overflowing iteration
    scaler.step(opt)
    scaler.update()
    assert torch.equal(params[0], before[0]) and len(opt.state) == 0
    assert scaler.get_scale() == 2.0
    opt.zero_grad()
    scaler.scale(params[0].sum()).backward()  # a normal iteration: step with review
    scaler.step(opt)
    scaler.update()
    assert torch.equal(opt.state[params[0]]['anchor'], before[0])
    assert not torch.equal(params[0], before[0])


def test_add_param_group_reresolves_index() -> None:
    params = make_params([(2, 2), (2, 2), (2, 2)])
    opt = DualOptAdamW(params[:2], lr=1e-3, k_max=0.01)
    assert [r[1:] for r in opt.review_levels()] == [(0, 2, 0.01), (1, 2, 0.0)]
    opt.add_param_group({'params': params[2:]})
    assert [r[1:3] for r in opt.review_levels()] == [(0, 3), (1, 3), (2, 3)]
    assert opt.review_levels()[1][3] == pytest.approx(0.005)


def test_review_levels_with_constructor_layer_ids() -> None:
    """Groups carrying layer_id (as DualOptOptimWrapperConstructor or mmpretrain's layer-decay
    constructor write them); num_layers inferred as 1 + max(layer_id) when absent."""
    params = make_params([(2, 2), (2,), (2, 2), (2, 2)])
    groups = [{'params': [params[0]], 'layer_id': 0}, {'params': [params[1]], 'layer_id': 0},
              {'params': [params[2]], 'layer_id': 2}, {'params': [params[3]], 'mode': 'none'}]
    opt = DualOptSGD(groups, lr=0.02, k_max=0.02, k_min=0.01, gamma=2.0)
    rows = opt.review_levels()
    assert [r[1:3] for r in rows] == [(0, 3), (0, 3), (2, 3), (None, None)]
    assert [r[3] for r in rows] == [0.02, 0.02, 0.01, 0.0]
    assert rows[0][0] is params[0]
    assert layer_level(1, 3, 0.02, 0.01, 2.0) == pytest.approx(0.0125)


def test_frozen_tensors_not_indexed() -> None:
    params = make_params([(2, 2), (2, 2), (2, 2)])
    params[0].requires_grad_(False)
    opt = DualOptSGD(params, lr=0.1)
    assert [r[1:3] for r in opt.review_levels()] == [(None, None), (0, 2), (1, 2)]


@pytest.mark.parametrize('cls', [DualOptSGD, DualOptAdam, DualOptAdamW])
def test_step_closure_returns_loss(cls: type) -> None:
    params = make_params([(3,)])

    def closure() -> torch.Tensor:
        loss = (params[0] ** 2).sum()
        params[0].grad = None
        loss.backward()
        return loss

    opt = cls(params, lr=0.1)
    expected = float((params[0].detach() ** 2).sum())
    assert float(opt.step(closure)) == pytest.approx(expected)
    assert opt.step() is None


def test_capture_anchors_from_given_values() -> None:
    """theta_0 from given values (a pretrained checkpoint): cast to the parameter's dtype, and
    refused naming the tensor when a value is missing or of another shape."""
    params = make_params([(2, 2), (2, 2)])
    opt = DualOptSGD(params, lr=0.1)
    given = {params[0]: torch.ones(2, 2, dtype=torch.float64), params[1]: torch.full((2, 2), 2.)}
    assert opt.capture_anchors(values=given) == 2
    assert opt.state[params[0]]['anchor'].dtype == params[0].dtype
    assert torch.equal(opt.state[params[1]]['anchor'], torch.full((2, 2), 2.0))
    with pytest.raises(ValueError, match='no value given for parameter 1 of param group 0'):
        opt.capture_anchors(params, values={params[0]: torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r'parameter 0 of param group 0 has shape \(3,\)'):
        opt.capture_anchors(values={params[0]: torch.ones(3)})
