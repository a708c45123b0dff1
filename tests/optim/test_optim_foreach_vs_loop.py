"""The foreach path equals the per-tensor loop exactly (same operations), float64 and mixed
dtypes: a layer frozen then unfrozen, a step without any gradient, a zero-size tensor, every
mode, bf16 anchors."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from optim_reference import clone_params, make_params, mixed_review_groups, set_grads

from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

CASES: list[tuple[type, dict[str, Any]]] = [
    (DualOptSGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (DualOptSGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (DualOptSGD, dict(lr=0.05)),
    (DualOptAdam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (DualOptAdamW, dict(lr=1e-2, weight_decay=5e-2)),
    (DualOptAdamW, dict(lr=1e-2, maximize=True, anchor_dtype='bfloat16')),
]


def _params(mixed: bool) -> list[torch.Tensor]:
    params = make_params([(4, 3), (3,), (0,), (2, 5), (5,), (3, 3), (2, 2)])
    if mixed:  # float32 and float64 in the same groups
        params = [p.detach().float().requires_grad_() if i % 2 else p
                  for i, p in enumerate(params)]
    return params




@pytest.mark.parametrize('mixed', [False, True], ids=['float64', 'float32+float64'])
@pytest.mark.parametrize('cls,kwargs', CASES,
                         ids=[f'{c[0].__name__}-{i}' for i, c in enumerate(CASES)])
def test_foreach_equals_loop(cls: type, kwargs: dict[str, Any], mixed: bool) -> None:
    loop_params = _params(mixed)
    foreach_params = clone_params(loop_params)
    loop = cls(mixed_review_groups(loop_params), foreach=False, **kwargs)
    foreach = cls(mixed_review_groups(foreach_params), foreach=True, **kwargs)
    for step in range(9):
        if step == 4:  # a step where no parameter has a gradient
            for p in loop_params + foreach_params:
                p.grad = None
        else:
            skip = {0, 3} if step < 3 else None  # layers frozen, then unfrozen
            set_grads(loop_params, step, skip)
            set_grads(foreach_params, step, skip)
        loop.step()
        foreach.step()
        for i, (p_loop, p_foreach) in enumerate(zip(loop_params, foreach_params)):
            assert torch.equal(p_loop, p_foreach), f'tensor {i} step {step}'
    for p_loop, p_foreach in zip(loop_params, foreach_params):
        s_loop, s_foreach = loop.state[p_loop], foreach.state[p_foreach]
        assert set(s_loop) == set(s_foreach)
        for key in s_loop:
            assert torch.equal(s_loop[key], s_foreach[key]), key


def test_frozen_tensor_untouched_and_no_grad_step_is_noop() -> None:
    params = make_params([(3, 3), (3,)])
    before = clone_params(params)
    opt = DualOptAdamW(params, lr=0.1, k_max=0.5, foreach=True)
    opt.step()  # no gradients at all
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert len(opt.state) == 0
    set_grads(params, 0, skip={1})
    opt.step()
    assert torch.equal(params[1], before[1])  # grad None: no learning step, no review
    assert params[1] not in opt.state
    assert not torch.equal(params[0], before[0])


def test_foreach_none_follows_torch_default_on_cpu() -> None:
    """foreach=None resolves to the loop on CPU (as torch); results equal both explicit paths."""
    results = []
    for foreach in (None, False, True):
        params = make_params([(3, 2), (4,)])
        opt = DualOptSGD(params, lr=0.1, momentum=0.9, foreach=foreach, k_max=0.3)
        for step in range(4):
            set_grads(params, step)
            opt.step()
        results.append(params)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize('path', ['loop', 'foreach', 'fused', 'fused-torch-kernel'])
def test_the_requested_path_runs(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Guards the tests above: foreach=True really takes the foreach functional, once for
    the whole optimizer (all groups of one bucket), False the loop and fused=True the fused
    one: the native CPU kernel (review inside), or without it torch's kernel then the review
    of the chunk."""
    from dualopt_mm.compat.torch_features import fused_kernel
    from dualopt_mm.optim import adam_functional, fused

    if path == 'fused-torch-kernel':
        monkeypatch.setattr(adam_functional, 'native_kernels', lambda: None)
    elif path == 'fused' and adam_functional.native_kernels() is None:
        pytest.skip('no C compiler: the native CPU kernels are not built')
    if path.startswith('fused') and fused_kernel('adamw', 'cpu') is None:
        pytest.skip('this torch has no CPU fused AdamW kernel (torch >= 2.4)')
    calls: list[str] = []
    targets = [(adam_functional.ADAM_FUNCTIONALS, key) for key in adam_functional.ADAM_FUNCTIONALS]
    for table, key in targets:
        original = table[key]

        def spy(*args: Any, _name: str = key, _original: Any = original, **kw: Any) -> None:
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setitem(table, key, spy)
    for module, name in [(adam_functional, 'review_multi_tensor'),
                         (adam_functional, 'review_tensor_'), (adam_functional, 'review_chunk_'),
                         (fused, 'foreach_lerp_')]:
        original = getattr(module, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> None:
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(module, name, spy)
    params = make_params([(2, 2)] * 3)
    flags = {'loop': dict(foreach=False), 'foreach': dict(foreach=True),
             'fused': dict(fused=True), 'fused-torch-kernel': dict(fused=True)}
    opt = DualOptAdamW([{'params': [p]} for p in params], lr=0.1, **flags[path])
    set_grads(params, 0)
    opt.step()
    if path == 'foreach':
        assert calls == ['foreach', 'review_multi_tensor']
    elif path == 'fused':  # one call for the three groups, the review inside the kernel
        assert calls == ['fused']
    elif path == 'fused-torch-kernel':  # torch's kernel, then one review for the three groups
        assert calls == ['fused', 'review_chunk_', 'foreach_lerp_']
    else:  # the deepest tensor has k_min = 0: no review
        assert calls == ['loop', 'review_tensor_', 'review_tensor_']


def test_large_tensors_are_chunked_and_sliced_alike() -> None:
    """Tensors above the CPU chunk size (64 Ki elements), with bf16 anchors upcast slice by
    slice: both paths equal each other and the formula."""
    shapes = [(300, 300), (70_000,), (5,)]
    loop_params = make_params(shapes, dtype=torch.float32)
    foreach_params = clone_params(loop_params)
    theta0 = clone_params(loop_params)
    kwargs = dict(lr=0.1, k_max=0.5, k_min=0.5, anchor_dtype='bfloat16')
    loop = DualOptSGD(loop_params, foreach=False, **kwargs)
    foreach = DualOptSGD(foreach_params, foreach=True, **kwargs)
    set_grads(loop_params, 0)
    set_grads(foreach_params, 0)
    loop.step()
    foreach.step()
    for p_loop, p_foreach, p0 in zip(loop_params, foreach_params, theta0):
        assert torch.equal(p_loop, p_foreach)
        theta_hat = p0 - 0.1 * p_loop.grad
        expected = theta_hat.lerp(p0.bfloat16().float(), 0.5)
        torch.testing.assert_close(p_loop, expected, rtol=1e-6, atol=1e-6)
