"""reference=True reproduces the authors' AdamB (optim_reference.AdamBReference, written from
its description) to 1e-12 in float64: in-group tensor-order index, eps inside the base of the
level, per-group bias-correction step count, the paper's k_max = 0.01 / lr."""
from __future__ import annotations

import math

import pytest
import torch
from optim_reference import AdamBReference, clone_params, make_params, set_grads

from dualopt_mm.optim import DualOptAdam

SHAPES = [(4, 3), (3,), (2, 2, 3), (5,), (3, 2), (6,), (2, 4)]


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('gamma', [1.0, 2.0])
def test_reference_matches_adamb(gamma: float, foreach: bool) -> None:
    lr = 1e-2
    ref_params = make_params(SHAPES)
    our_params = clone_params(ref_params)
    k_max = 0.3 / lr  # strong enough to matter over 25 steps (the paper: 0.01 / lr)
    reference = AdamBReference([
        {'params': ref_params[:5], 'lr': lr, 'pretrained': True, 'k_max': k_max,
         'k_min': 0.0, 'gamma': gamma},
        {'params': ref_params[5:], 'lr': lr, 'pretrained': False},
    ])
    ours = DualOptAdam(
        [{'params': our_params[:5]}, {'params': our_params[5:], 'mode': 'none'}],
        lr=lr, reference=True, k_unit='absolute', k_max=k_max, k_min=0.0, gamma=gamma,
        foreach=foreach)
    for step in range(25):
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * step / 25))  # cosine, as in the paper
        for g in reference.groups + ours.param_groups:
            g['lr'] = lr_t
        # tensor 1 has no gradient at steps 2..4: the per-group step still advances
        skip = {1} if 2 <= step <= 4 else None
        set_grads(ref_params, step, skip)
        set_grads(our_params, step, skip)
        reference.step()
        ours.step()
        for i, (p_ref, p_ours) in enumerate(zip(ref_params, our_params)):
            torch.testing.assert_close(p_ours, p_ref, rtol=0.0, atol=1e-12,
                                       msg=f'tensor {i} step {step}')
    assert ours.param_groups[0]['reference_step'] == 25
    # the last tensor of the group gets the reference's slightly negative level
    levels = [row[3] for row in ours.review_levels()[:5]]
    assert levels[0] == pytest.approx(k_max * (1 - 1e-8) ** gamma)
    assert levels[4] == pytest.approx((-1e-8) ** gamma * k_max, rel=1e-6)


def test_reference_differs_from_default_index() -> None:
    """Per-group index vs global index: two groups of two tensors give other levels."""
    params = make_params([(2,), (2,), (2,), (2,)])
    groups = [{'params': params[:2]}, {'params': params[2:]}]
    ref = DualOptAdam(groups, lr=0.01, reference=True, k_unit='absolute', k_max=1.0)
    assert [round(r[3], 6) for r in ref.review_levels()] == [1.0, 0.0, 1.0, 0.0]
    groups = [{'params': params[:2]}, {'params': params[2:]}]
    default = DualOptAdam(groups, lr=0.01, k_unit='absolute', k_max=1.0)
    assert [round(r[3], 6) for r in default.review_levels()] == [1.0, 0.666667, 0.333333, 0.0]


def test_reference_refuses_what_the_reference_cannot_compute() -> None:
    params = make_params([(2,), (2,)])
    one_per_group = DualOptAdam([{'params': [p]} for p in params], reference=True)
    with pytest.raises(ValueError, match='divides by zero for a group of 1 tensor'):
        one_per_group.review_levels()
    complex_level = DualOptAdam(params, reference=True, gamma=1.5)
    with pytest.raises(ValueError, match='non-integer gamma=1.5'):
        complex_level.review_levels()
