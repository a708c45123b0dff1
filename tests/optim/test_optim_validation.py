"""Clear ValueErrors naming the bad value, torch's own checks, and stock kwargs accepted."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from optim_reference import make_params, set_grads

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

ALL = [DualOptSGD, DualOptAdam, DualOptAdamW]


@pytest.mark.parametrize('cls', ALL)
@pytest.mark.parametrize('kwargs,match', [
    (dict(gamma=0.0), r'gamma=0.0 must be > 0'),
    (dict(gamma=-1.0), r'gamma=-1.0 must be > 0'),
    (dict(k_min=0.02, k_max=0.01), r'k_min=0.02 > k_max=0.01'),
    (dict(k_min=-0.1), r'k_min=-0.1 is negative'),
    (dict(mode='rollback'), r"unknown mode 'rollback': allowed are 'finetune', 'scratch'"),
    (dict(k_unit='relative'), r"unknown k_unit 'relative'"),
    (dict(k_max=1.5), r"k_max=1.5 > 1 with k_unit='base_lr'"),
    (dict(lr=0.1, k_unit='absolute', k_max=20.0), r'lambda = lr \* k_max = 2 > 1'),
    (dict(anchor_dtype='int8'), r"anchor_dtype='int8' is not allowed"),
    (dict(layer_id=3, num_layers=3), r'layer_id=3 must be in \[0, num_layers - 1\]'),
    (dict(layer_id=-1), r'layer_id=-1 must be in'),
    (dict(num_layers=0), r'num_layers=0 must be >= 1'),
    (dict(base_lr=-1.0), r'base_lr=-1.0 must be >= 0'),
    (dict(k_max=float('nan')), r'k_max must be finite'),
    (dict(skip_1d='yes'), r'skip_1d must be None or a bool'),
    (dict(fused=True, foreach=True), r'fused=True and foreach=True cannot be set together'),
    (dict(fused='yes'), r"fused='yes' must be None, False or True"),
    (dict(differentiable=True), r'differentiable=True is not supported'),
    (dict(lr=-1.0), r'Invalid learning rate: -1.0'),
    (dict(lr=torch.tensor(0.1)), r'lr as a Tensor is not supported'),
    (dict(weight_decay=-1.0), r'Invalid weight_decay value: -1.0'),
])
def test_invalid_hyperparameters(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(make_params([(2, 2)]), **kwargs)


@pytest.mark.parametrize('cls,kwargs,match', [
    (DualOptAdam, dict(capturable=True), r'capturable=True is not supported'),
    (DualOptAdamW, dict(betas=(0.9, 1.0)), r'Invalid beta parameter at index 1: 1.0'),
    (DualOptAdam, dict(eps=-1e-8), r'Invalid epsilon value'),
    (DualOptSGD, dict(momentum=-0.5), r'Invalid momentum value: -0.5'),
    (DualOptSGD, dict(nesterov=True), r'Nesterov momentum requires a momentum'),
])
def test_torch_checks(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(make_params([(2, 2)]), **kwargs)


@pytest.mark.parametrize('cls,kwargs', [
    # what stock mmdet / mmseg / mmpretrain configs pass (merged into by a child config)
    (DualOptSGD, dict(lr=0.02, momentum=0.9, weight_decay=1e-4, dampening=0.0, nesterov=False,
                      maximize=False, foreach=None, differentiable=False, fused=None)),
    (DualOptAdamW, dict(lr=6e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                        amsgrad=False, foreach=None, maximize=False, capturable=False,
                        differentiable=False, fused=None)),
    (DualOptAdam, dict(lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0, fused=False,
                       decoupled_weight_decay=False, anchor_dtype=torch.bfloat16)),
])
def test_stock_kwargs_accepted(cls: type, kwargs: dict[str, Any]) -> None:
    opt = cls(make_params([(2, 2)]), **kwargs)
    assert opt.defaults['mode'] == 'finetune' and opt.defaults['k_unit'] == 'base_lr'
    if 'anchor_dtype' in kwargs:
        assert opt.param_groups[0]['anchor_dtype'] == 'bfloat16'  # stored as a string


def test_lambda_above_one_raises_at_step() -> None:
    """A schedule that raises lr beyond base_lr / k_max makes lambda > 1: refused at step,
    naming lambda, lr, k and the group."""
    params = make_params([(2, 2), (2,)])
    opt = DualOptSGD([{'params': params[:1]}, {'params': params[1:]}], lr=0.1, k_max=0.5)
    set_grads(params, 0)
    opt.step()  # base_lr = 0.1 resolved here
    opt.param_groups[1]['lr'] = 0.1 * 2.5  # lambda = 2.5 * k_1
    opt.step()  # group 1 holds the deepest tensor: k_1 = k_min = 0
    opt.param_groups[0]['lr'] = 0.1 * 2.5
    with pytest.raises(ValueError, match=r'lambda = 1.25 > 1 in param group 0 \(lr=0.25, '
                                         r"k=0.5, k_unit='base_lr', base_lr=0.1\)"):
        opt.step()


def test_absolute_lambda_above_one_raises_at_step() -> None:
    params = make_params([(2, 2)])
    opt = DualOptAdam(params, lr=0.01, k_unit='absolute', k_max=50.0)
    set_grads(params, 0)
    opt.step()
    opt.param_groups[0]['lr'] = 0.03
    with pytest.raises(ValueError, match=r'lambda = (lr \* k_max = )?1.5 > 1.*param group 0'):
        opt.step()


def test_hyperparameters_changed_later_are_validated_at_step() -> None:
    params = make_params([(2, 2)])
    opt = DualOptAdamW(params, lr=0.01)
    opt.param_groups[0]['gamma'] = 0.0
    set_grads(params, 0)
    with pytest.raises(ValueError, match=r'gamma=0.0 must be > 0 .*\(param group 0\)'):
        opt.step()


def test_base_lr_zero_with_positive_lr_raises() -> None:
    params = make_params([(2, 2)])
    opt = DualOptSGD(params, lr=0.0)
    set_grads(params, 0)
    opt.step()  # lr 0: base_lr 0, no review, fine
    opt.param_groups[0]['lr'] = 0.1
    with pytest.raises(ValueError, match=r'base_lr=0 but lr=0.1'):
        opt.step()


def test_mixed_layer_id_groups_raise() -> None:
    params = make_params([(2, 2), (2, 2), (2,)])
    opt = DualOptSGD([{'params': params[:1], 'layer_id': 0, 'num_layers': 2},
                      {'params': params[1:2]},
                      {'params': params[2:], 'mode': 'none'}], lr=0.1)
    with pytest.raises(ValueError, match=r'param groups \[0\] set layer_id but the reviewed '
                                         r'groups \[1\] do not'):
        opt.review_levels()


def test_add_param_group_validates_and_rolls_back() -> None:
    params = make_params([(2, 2), (3,)])
    opt = DualOptAdamW(params[:1], lr=0.01)
    with pytest.raises(ValueError, match=r"unknown mode 'x'.*\(param group 1\)"):
        opt.add_param_group({'params': params[1:], 'mode': 'x'})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r'fused=True and foreach=True cannot be set'):
        opt.add_param_group({'params': params[1:], 'fused': True, 'foreach': True})
    opt.add_param_group({'params': params[1:], 'k_max': 0.5})
    assert len(opt.param_groups) == 2


def test_complex_and_sparse_refused() -> None:
    with pytest.raises(ValueError, match='complex parameters are not supported'):
        DualOptAdam([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])
    p = torch.zeros(3, requires_grad=True)
    opt = DualOptAdam([p], lr=0.1)  # like torch's Adam; DualOptSGD takes them, like torch's SGD
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match='does not support sparse gradients'):
        opt.step()
