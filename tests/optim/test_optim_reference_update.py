"""Both paths (loop, foreach) against the plain reference of SPEC section 1
(optim_reference.DualOptReference): several groups of different lr, layer ids and modes, an lr
that changes between steps, k_unit 'base_lr' and 'absolute', the three base optimizers."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from optim_reference import DualOptReference, clone_params, make_params, set_grads

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

SHAPES = [(3, 4), (4,), (2, 3), (3,), (5, 2), (2,), (3, 3)]
OPTIMIZERS = {
    'sgd': (DualOptSGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    'sgd_nesterov': (DualOptSGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    'adam': (DualOptAdam, dict(lr=1e-2, weight_decay=1e-2)),
    'adamw': (DualOptAdamW, dict(lr=1e-2, weight_decay=5e-2)),
}


def _groups(params: list[torch.Tensor], k_unit: str, explicit_ids: bool,
            lr: float) -> list[dict[str, Any]]:
    k_max = 0.3 if k_unit == 'base_lr' else 0.3 / lr
    groups = [
        {'params': params[0:2], 'k_max': k_max, 'k_min': k_max / 10},
        {'params': params[2:4], 'lr': lr * 0.5, 'k_max': k_max, 'gamma': 2.0},
        {'params': params[4:5], 'mode': 'scratch', 'k_max': k_max, 'skip_1d': False},
        {'params': params[5:6], 'mode': 'none'},  # e.g. a new head
        {'params': params[6:], 'lr': lr * 2.0, 'k_max': k_max, 'reverse': True},
    ]
    for g in groups:
        g['k_unit'] = k_unit
    if explicit_ids:  # as the constructor writes them: one layer per group
        for layer_id, g in enumerate(g for g in groups if g.get('mode') != 'none'):
            g.update(layer_id=layer_id, num_layers=4)
    return groups


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('explicit_ids', [False, True], ids=['tensor_order', 'layer_id'])
@pytest.mark.parametrize('k_unit', ['base_lr', 'absolute'])
@pytest.mark.parametrize('name', list(OPTIMIZERS))
def test_matches_reference(name: str, k_unit: str, explicit_ids: bool, foreach: bool) -> None:
    cls, kwargs = OPTIMIZERS[name]
    algorithm = {'sgd': 'sgd', 'sgd_nesterov': 'sgd'}.get(name, name)
    ref_params = make_params(SHAPES)
    our_params = clone_params(ref_params)
    lr = kwargs['lr']
    reference = DualOptReference(
        [{**kwargs, **g} for g in _groups(ref_params, k_unit, explicit_ids, lr)], algorithm)
    ours = cls(_groups(our_params, k_unit, explicit_ids, lr), foreach=foreach, **kwargs)
    for g in ours.param_groups:  # as an lr scheduler does: base_lr is resolved from it
        g['initial_lr'] = g['lr']
    for step in range(20):
        factor = 0.5 + 0.5 * (step % 5) / 4  # the lr changes at every step
        for g_ref, g_ours in zip(reference.groups, ours.param_groups):
            g_ours['lr'] = g_ref['lr'] = g_ref['base_lr'] * factor
        skip = {2} if step < 3 else None  # a tensor frozen for the first steps
        set_grads(ref_params, step, skip)
        set_grads(our_params, step, skip)
        reference.step()
        ours.step()
        for i, (p_ref, p_ours) in enumerate(zip(ref_params, our_params)):
            torch.testing.assert_close(p_ours, p_ref, rtol=1e-12, atol=1e-13,
                                       msg=f'tensor {i} step {step}')
    # the review did act: the result is far from the review-free update
    plain = clone_params(make_params(SHAPES))
    plain_opt = cls(_groups(plain, k_unit, explicit_ids, lr), foreach=foreach, mode='none',
                    **kwargs)
    for g in plain_opt.param_groups:
        g['mode'] = 'none'
    for step in range(20):
        for g_ref, g_plain in zip(reference.groups, plain_opt.param_groups):
            g_plain['lr'] = g_ref['base_lr'] * (0.5 + 0.5 * (step % 5) / 4)
        set_grads(plain, step, {2} if step < 3 else None)
        plain_opt.step()
    assert (our_params[0] - plain[0]).abs().max() > 1e-3


def test_reference_levels_match_review_levels() -> None:
    params = make_params(SHAPES)
    groups = _groups(params, 'base_lr', False, 0.1)
    ours = DualOptSGD(groups, lr=0.1)
    reference = DualOptReference(_groups(clone_params(params), 'base_lr', False, 0.1), 'sgd')
    rows = ours.review_levels()
    expected = [reference.k(gi, pi) for gi, g in enumerate(reference.groups)
                for pi in range(len(g['params']))]
    assert [r[3] if r[1] is not None else None for r in rows] == pytest.approx(expected)
    # literal: 6 reviewed tensors in tensor order (the mode='none' one is not counted)
    assert [r[1:3] for r in rows] == [(0, 6), (1, 6), (2, 6), (3, 6), (4, 6), (None, None),
                                      (5, 6)]
