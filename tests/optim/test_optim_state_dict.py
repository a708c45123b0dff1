"""state_dict round trip through torch.save / torch.load(weights_only=True): a resumed run
continues bit for bit like an uninterrupted one; anchors are neither lost nor re-captured."""
from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from optim_reference import clone_params, make_params, set_grads

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

CASES: list[tuple[type, dict[str, Any]]] = [
    (DualOptSGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (DualOptAdamW, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (DualOptAdamW, dict(lr=1e-2, anchor_dtype='bfloat16')),
    (DualOptAdam, dict(lr=1e-2, reference=True, k_unit='absolute', k_max=20.0)),
]


def _groups(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [{'params': params[:3], 'k_max': 0.3},
            {'params': params[3:4], 'mode': 'scratch', 'skip_1d': False},
            {'params': params[4:], 'mode': 'none'}]


def _round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    scheduler_lr = opt.param_groups[0]['base_lr'] or opt.param_groups[0]['lr']
    for step in steps:
        for g in opt.param_groups:  # an lr that changes every step
            g['lr'] = scheduler_lr * (1 - step / 20)
        set_grads(params, step, skip={1} if step == 2 else None)
        opt.step()


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('cls,kwargs', CASES,
                         ids=[f'{c[0].__name__}-{i}' for i, c in enumerate(CASES)])
def test_resume_is_bit_identical(cls: type, kwargs: dict[str, Any], foreach: bool) -> None:
    shapes = [(3, 4), (4,), (2, 3), (3, 3), (2,)]
    params = make_params(shapes)
    kwargs = dict(kwargs)
    if kwargs.get('reference'):
        kwargs['k_max'] = 0.5 / kwargs['lr']
    uninterrupted = cls(_groups(params), foreach=foreach, **kwargs)
    if kwargs.get('reference'):  # one tensor in a group: reference=False for that group
        uninterrupted.param_groups[1]['reference'] = False
    _run(uninterrupted, params, range(6))
    saved_params = clone_params(params)
    saved = _round_trip(uninterrupted.state_dict())
    _run(uninterrupted, params, range(6, 14))

    resumed_params = clone_params(saved_params)
    resumed = cls(_groups(resumed_params), foreach=foreach, **kwargs)  # loads reference=False
    resumed.load_state_dict(saved)
    _run(resumed, resumed_params, range(6, 14))
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
    for p, q in zip(params, resumed_params):
        s_p, s_q = uninterrupted.state[p], resumed.state[q]
        assert set(s_p) == set(s_q)
        for key in s_p:
            assert torch.equal(s_p[key], s_q[key]) and s_p[key].dtype == s_q[key].dtype, key
    assert resumed.param_groups[0]['base_lr'] == kwargs['lr']


def test_wrong_shape_anchor_raises() -> None:
    params = make_params([(3, 4), (4,)])
    opt = DualOptAdamW(params, lr=1e-3)
    opt.capture_anchors()
    state_dict = opt.state_dict()
    state_dict['state'][0]['anchor'] = torch.zeros(4, 3)
    fresh = DualOptAdamW(clone_params(params), lr=1e-3)
    with pytest.raises(ValueError, match=r'anchor \(theta_0\) of shape \(4, 3\) for parameter 0 '
                                         r'of param group 0, whose shape is now \(3, 4\)'):
        fresh.load_state_dict(state_dict)
    assert len(fresh.state) == 0  # refused before anything was loaded


def test_loads_a_torch_adamw_checkpoint() -> None:
    """Switching a run from torch AdamW to DualOptAdamW: the torch state loads and the DualOpt
    keys keep the optimizer's values; the weights are mid-training, so the next step refuses
    to anchor them silently; capture_anchors() does it on purpose."""
    params = make_params([(3, 3), (3,)])
    torch_opt = torch.optim.AdamW(params, lr=1e-2)
    set_grads(params, 0)
    torch_opt.step()
    ours = DualOptAdamW(params, lr=1e-2, k_max=0.2)
    ours.load_state_dict(_round_trip(torch_opt.state_dict()))
    assert ours.param_groups[0]['k_max'] == 0.2 and ours.param_groups[0]['mode'] == 'finetune'
    before = params[0].detach().clone()
    set_grads(params, 1)
    with pytest.raises(RuntimeError, match='no theta_0'):
        ours.step()
    assert ours.capture_anchors() == 2
    ours.step()
    assert torch.equal(ours.state[params[0]]['anchor'], before)
    assert float(ours.state[params[0]]['step']) == 2.0


def test_torch_adamw_checkpoint_at_k_zero_migrates() -> None:
    """At k = 0 no anchor is ever used: the migration from torch AdamW just continues."""
    params = make_params([(3, 3), (3,)])
    torch_opt = torch.optim.AdamW(params, lr=1e-2)
    set_grads(params, 0)
    torch_opt.step()
    ours = DualOptAdamW(params, lr=1e-2, k_max=0.0)
    ours.load_state_dict(_round_trip(torch_opt.state_dict()))
    set_grads(params, 1)
    ours.step()
    assert float(ours.state[params[0]]['step']) == 2.0


def test_deepcopy_keeps_state_and_levels() -> None:
    import copy

    params = make_params([(3, 3), (3,)])
    opt = DualOptAdamW(params, lr=1e-2, k_max=0.2, anchor_dtype='bfloat16')
    set_grads(params, 0)
    opt.step()
    clone = copy.deepcopy(opt)
    assert clone.review_levels()[0][1:] == (0, 2, 0.2)
    cloned_anchor = clone.state[clone.param_groups[0]['params'][0]]['anchor']
    assert cloned_anchor.dtype == torch.bfloat16
    assert torch.equal(cloned_anchor, opt.state[params[0]]['anchor'])
