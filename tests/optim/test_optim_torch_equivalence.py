"""With k = 0 (or mode='none') every DualOpt optimizer is torch's SGD / Adam / AdamW, exactly:
parameters and torch's state, float64, 20+ steps, several groups, loop and foreach paths."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from optim_reference import clone_params, make_params, set_grads
from torch_versions import ADAM_FIRST_MOMENT_IS_LERP, TORCH

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

SHAPES = [(4, 3), (3,), (2, 2, 3), (5,), (0, 3)]
STEPS = 22

CASES: list[tuple[type, type, dict[str, Any]]] = [
    (DualOptSGD, torch.optim.SGD, dict(lr=0.05)),
    (DualOptSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (DualOptSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3,
                                       weight_decay=1e-3, maximize=True)),
    (DualOptSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True,
                                       weight_decay=1e-2)),
    (DualOptAdam, torch.optim.Adam, dict(lr=1e-2)),
    (DualOptAdam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    (DualOptAdam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6,
                                         weight_decay=0.05, maximize=True)),
    (DualOptAdamW, torch.optim.AdamW, dict(lr=1e-2)),
    (DualOptAdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
]


def _groups(params: list[torch.Tensor], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Three groups with their own lr / weight_decay (one group per tensor for the rest)."""
    lr = kwargs['lr']
    return [
        {'params': params[:2]},
        {'params': params[2:3], 'lr': lr * 0.3, 'weight_decay': 0.0},
        {'params': params[3:4], 'lr': lr * 2.0},
        {'params': params[4:]},
    ]


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('review_off', [dict(k_max=0.0), dict(mode='none')],
                         ids=['k0', 'mode_none'])
@pytest.mark.parametrize('ours_cls,torch_cls,kwargs', CASES,
                         ids=[f'{c[0].__name__}-{i}' for i, c in enumerate(CASES)])
def test_equals_torch(ours_cls: type, torch_cls: type, kwargs: dict[str, Any], foreach: bool,
                      review_off: dict[str, Any]) -> None:
    ref_params = make_params(SHAPES)
    our_params = clone_params(ref_params)
    reference = torch_cls(_groups(ref_params, kwargs), foreach=foreach, **kwargs)
    ours = ours_cls(_groups(our_params, kwargs), foreach=foreach, **kwargs, **review_off)
    for step in range(STEPS):
        skip = {1} if step in (3, 4) else None  # a tensor without gradient for two steps
        set_grads(ref_params, step, skip)
        set_grads(our_params, step, skip)
        reference.step()
        ours.step()
        for p_ref, p_ours in zip(ref_params, our_params):
            if torch_cls is torch.optim.SGD or ADAM_FIRST_MOMENT_IS_LERP:
                assert torch.equal(p_ref, p_ours), f'step {step}'
            else:  # torch 2.0 (see torch_versions): the same step to the last bits of float64
                torch.testing.assert_close(p_ref, p_ours, rtol=1e-14, atol=1e-15)
    if torch_cls is not torch.optim.SGD and not ADAM_FIRST_MOMENT_IS_LERP:
        pytest.skip(f'torch {TORCH} updates Adam\'s first moment as mul_ + add_ (lerp_ from '
                    f'torch 2.1 on, as DualOpt): equal to ~1e-16, not bit for bit')
    for p_ref, p_ours in zip(ref_params, our_params):
        ref_state, our_state = reference.state[p_ref], ours.state[p_ours]
        # torch 2.0 / 2.1's SGD without momentum stores momentum_buffer=None (later torch
        # stores nothing): an empty entry, not state
        ref_state = {k: v for k, v in ref_state.items() if v is not None}
        assert set(ref_state) <= set(our_state)
        for key, value in ref_state.items():
            assert torch.equal(value, our_state[key]), key
        assert ('anchor' in our_state) == ('mode' not in review_off)


def test_equals_torch_under_lr_schedule() -> None:
    """An lr scheduler drives both alike (mmengine/torch schedulers write group['lr'])."""
    ref_params = make_params(SHAPES[:3])
    our_params = clone_params(ref_params)
    reference = torch.optim.AdamW(ref_params, lr=1e-2, foreach=True)
    ours = DualOptAdamW(our_params, lr=1e-2, foreach=True, k_max=0.0)
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)
                  for o in (reference, ours)]
    for step in range(12):
        set_grads(ref_params, step)
        set_grads(our_params, step)
        reference.step()
        ours.step()
        for s in schedulers:
            s.step()
    for p_ref, p_ours in zip(ref_params, our_params):
        assert torch.equal(p_ref, p_ours)
    assert ours.param_groups[0]['base_lr'] == 1e-2  # from initial_lr, not the decayed lr
