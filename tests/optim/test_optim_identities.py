"""Algebraic identities of the review step (SPEC section 1), each checked on its own."""
from __future__ import annotations

import pytest
import torch
from optim_reference import clone_params, make_grad, make_params, set_grads

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD, review


@pytest.mark.parametrize('foreach', [False, True])
def test_review_is_decoupled_decay_toward_anchor_sgd(foreach: bool) -> None:
    """theta_{t+1} = theta_t - eta (1 - eta k) g - eta k (theta_t - a), a = theta_0."""
    eta, k = 0.1, 2.0
    params = make_params([(3, 4)])
    theta0 = params[0].detach().clone()
    expected = theta0.clone()
    opt = DualOptSGD(params, lr=eta, k_unit='absolute', k_max=k, k_min=k, foreach=foreach)
    for step in range(15):
        set_grads(params, step)
        g = make_grad(step, 0, params[0])
        expected = expected - eta * (1 - eta * k) * g - eta * k * (expected - theta0)
        opt.step()
        torch.testing.assert_close(params[0].detach(), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize('foreach', [False, True])
def test_review_is_decoupled_decay_toward_anchor_adam(foreach: bool) -> None:
    """The same identity with Adam's direction u_t (taken from torch's Adam, which with
    weight_decay=0 does not depend on theta: theta_hat = theta - eta u)."""
    eta, k = 0.05, 4.0
    params = make_params([(2, 5)])
    theta0 = params[0].detach().clone()
    probe = torch.zeros_like(theta0, requires_grad=True)  # gives -u per step with lr=1
    torch_adam = torch.optim.Adam([probe], lr=1.0)
    expected = theta0.clone()
    opt = DualOptAdam(params, lr=eta, k_unit='absolute', k_max=k, k_min=k, foreach=foreach)
    for step in range(15):
        set_grads(params, step)
        probe.grad = make_grad(step, 0, probe)
        before = probe.detach().clone()
        torch_adam.step()
        u = before - probe.detach()
        expected = expected - eta * (1 - eta * k) * u - eta * k * (expected - theta0)
        opt.step()
        torch.testing.assert_close(params[0].detach(), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize('cls', [DualOptSGD, DualOptAdamW])
@pytest.mark.parametrize('k_unit', ['absolute', 'base_lr'])
def test_lambda_one_pins_to_anchor(cls: type, k_unit: str) -> None:
    eta = 0.1
    k = 1 / eta if k_unit == 'absolute' else 1.0
    params = make_params([(3, 3), (4,)])
    theta0 = clone_params(params)
    zero = make_params([(2, 2)])
    opt = cls([{'params': params}, {'params': zero, 'mode': 'scratch'}], lr=eta,
              k_unit=k_unit, k_max=k, k_min=k, foreach=True)
    for step in range(5):
        set_grads(params + zero, step)
        opt.step()
        assert all(torch.equal(p, a) for p, a in zip(params, theta0))
        assert torch.equal(zero[0], torch.zeros_like(zero[0]))


@pytest.mark.parametrize('foreach', [False, True])
def test_scratch_uniform_k_is_adamw(foreach: bool) -> None:
    """Scratch mode, k_max = k_min = k (absolute), weight_decay 0 is torch AdamW with
    lr' = eta (1 - eta k) and weight_decay' = k / (1 - eta k)."""
    eta, k = 0.02, 3.0
    ours_params = make_params([(4, 3), (5,)])
    torch_params = clone_params(ours_params)
    ours = DualOptAdamW(ours_params, lr=eta, weight_decay=0.0, mode='scratch', skip_1d=False,
                        k_unit='absolute', k_max=k, k_min=k, foreach=foreach)
    reference = torch.optim.AdamW(torch_params, lr=eta * (1 - eta * k),
                                  weight_decay=k / (1 - eta * k))
    for step in range(20):
        set_grads(ours_params, step)
        set_grads(torch_params, step)
        ours.step()
        reference.step()
        for p_ours, p_ref in zip(ours_params, torch_params):
            torch.testing.assert_close(p_ours, p_ref, rtol=1e-12, atol=1e-13)


def test_k_unit_base_lr_equals_absolute_over_base_lr() -> None:
    """k_unit='base_lr', k equals k_unit='absolute', k / base_lr (any lr schedule)."""
    results = []
    for k_unit, k_max in [('base_lr', 0.05), ('absolute', 0.05 / 0.2)]:
        params = make_params([(3, 3), (3,), (2, 4)])
        opt = DualOptSGD(params, lr=0.2, momentum=0.9, k_unit=k_unit, k_max=k_max)
        for step in range(10):
            opt.param_groups[0]['lr'] = 0.2 * (1 - step / 10)
            set_grads(params, step)
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_default_strength_is_one_percent_at_base_lr_for_any_lr(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stock defaults roll the shallowest tensor back 1% of its displacement per step at
    the base lr, for an SGD lr of 0.02 and an AdamW lr of 1e-4 alike."""
    from dualopt_mm.optim import adam_functional, sgd_functional

    weights: list[float] = []
    for module in (adam_functional, sgd_functional):
        monkeypatch.setattr(module, 'review_tensor_', lambda p, a, w: weights.append(w))
    for cls, lr in [(DualOptSGD, 0.02), (DualOptAdamW, 1e-4)]:
        weights.clear()
        params = make_params([(3, 3), (3,), (3,)])
        opt = cls(params, lr=lr, foreach=False)
        set_grads(params, 0)
        opt.step()
        assert weights == pytest.approx([0.01, 0.005])  # the deepest tensor gets k_min = 0


@pytest.mark.parametrize('foreach', [None, False, True])
def test_apply_review_formula(foreach: bool) -> None:
    """The public review step: theta - lambda (theta - a), a = 0 for a None anchor; a bf16
    anchor is upcast; lambda = 0 leaves the tensor alone."""
    params = make_params([(3, 3), (4,), (2, 2), (5,)])
    anchors = [p.detach() * 0.5 for p in params]
    anchors[1] = None
    anchors[2] = anchors[2].bfloat16()
    weights = [0.25, 0.1, 0.5, 0.0]
    expected = []
    for p, a, w in zip(params, anchors, weights):
        a = torch.zeros_like(p) if a is None else a.to(p.dtype)
        expected.append(p.detach() - w * (p.detach() - a))
    with torch.no_grad():
        review.apply_review(params, anchors, weights, foreach=foreach)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-15, atol=1e-15)
