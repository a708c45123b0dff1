"""The fused path (fused=True) computes what the per-tensor loop computes: float64 to 1e-12,
float32 within a few ulp over many steps, 16-bit parameters within their rounding, with the
review active and moving the weights visibly; every mode, AMSGrad, maximize, coupled and
decoupled weight decay, Nesterov, reference=True, bf16 anchors, tensors cut into slices.
GradScaler's grad_scale / found_inf: an inf step skips the learning step and the review
alike. State dicts move between the paths. Without torch's kernel: said once, foreach runs."""
from __future__ import annotations

import io
import re
import warnings
from typing import Any

import pytest
import torch
from optim_reference import clone_params, make_params, mixed_review_groups, set_grads
from torch_versions import needs_amp_grad_scaler

from dualopt_mm.compat.torch_features import fused_kernel
from dualopt_mm.optim import (
    DualOptAdam,
    DualOptAdamW,
    DualOptSGD,
    adam_functional,
    base,
    fused,
    sgd_functional,
)
from dualopt_mm.optim.native import native_kernels

needs_cpu_fused = pytest.mark.skipif(
    fused_kernel('adamw', 'cpu') is None or fused_kernel('sgd', 'cpu') is None,
    reason=f'torch {torch.__version__} has no CPU fused SGD / Adam kernels (torch >= 2.4)')
HAS_FUSED = native_kernels() is not None or (fused_kernel('adamw', 'cpu') is not None
                                              and fused_kernel('sgd', 'cpu') is not None)
needs_fused = pytest.mark.skipif(
    not HAS_FUSED, reason=f'neither a C compiler (native kernels) nor torch '
                          f'{torch.__version__} CPU fused kernels (torch >= 2.4)')

CASES: list[tuple[type, dict[str, Any]]] = [
    (DualOptSGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (DualOptSGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (DualOptSGD, dict(lr=0.05, momentum=0.8, dampening=0.3)),
    (DualOptSGD, dict(lr=0.05)),
    (DualOptAdam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (DualOptAdam, dict(lr=1e-2, maximize=True)),
    (DualOptAdamW, dict(lr=1e-2, weight_decay=5e-2)),
    (DualOptAdamW, dict(lr=1e-2, amsgrad=True, maximize=True, anchor_dtype='bfloat16')),
]
IDS = [f'{c[0].__name__}-{i}' for i, c in enumerate(CASES)]
SHAPES = [(4, 3), (3,), (0,), (2, 5), (5,), (3, 3), (2, 2), (40,)]




def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for group in opt.param_groups:  # a scheduler: lr changes every step
            group['lr'] = group.setdefault('peak', group['lr']) * (1 - step / 40)
        if step == 4:  # a step where no parameter has a gradient
            for p in params:
                p.grad = None
        else:  # two tensors frozen, then unfrozen
            set_grads(params, step, {0, 3} if step < 3 else None)
        opt.step()


def _assert_paths_agree(cls: type, kwargs: dict[str, Any], dtype: torch.dtype, steps: int,
                        rtol: float, atol: float, margin: float = 1e3) -> None:
    loop_params = make_params(SHAPES, dtype=dtype)
    fused_params = clone_params(loop_params)
    plain_params = clone_params(loop_params)
    loop = cls(mixed_review_groups(loop_params), foreach=False, **kwargs)
    fused_opt = cls(mixed_review_groups(fused_params), fused=True, **kwargs)
    plain = cls([dict(g, mode='none') for g in mixed_review_groups(plain_params)], foreach=False,
                **kwargs)
    for opt, params in ((loop, loop_params), (fused_opt, fused_params), (plain, plain_params)):
        _run(opt, params, range(steps))
    for i, (p_loop, p_fused) in enumerate(zip(loop_params, fused_params)):
        torch.testing.assert_close(p_fused, p_loop, rtol=rtol, atol=atol, msg=f'tensor {i}')
    # the review moved the weights far more than the tolerance: the test can fail
    moved = max(float((p - q).abs().max().detach()) for p, q in zip(loop_params, plain_params)
                if p.numel())
    assert moved > margin * atol
    for p_loop, p_fused in zip(loop_params, fused_params):
        s_loop, s_fused = loop.state[p_loop], fused_opt.state[p_fused]
        assert set(s_loop) == set(s_fused)
        for key in s_loop:
            expected = s_loop[key].to(s_fused[key].dtype) if key == 'step' else s_loop[key]
            torch.testing.assert_close(s_fused[key], expected, rtol=rtol, atol=atol, msg=key)


def _use_torch_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the native CPU kernels off: the fused path runs torch's kernel + review."""
    monkeypatch.setattr(adam_functional, 'native_kernels', lambda: None)
    monkeypatch.setattr(sgd_functional, 'native_kernels', lambda: None)


@pytest.fixture(params=['native', 'torch-kernel'])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations of the fused path on CPU (the native one where it builds)."""
    if request.param == 'torch-kernel':
        if fused_kernel('adamw', 'cpu') is None or fused_kernel('sgd', 'cpu') is None:
            pytest.skip(f'torch {torch.__version__} has no CPU fused kernels (torch >= 2.4)')
        _use_torch_kernel(monkeypatch)
    elif native_kernels() is None:
        pytest.skip('no working C compiler: the native CPU kernels are not built')
    return request.param


@needs_fused
@pytest.mark.parametrize('cls,kwargs', CASES, ids=IDS)
def test_fused_equals_loop_float64(cls: type, kwargs: dict[str, Any], kernel: str) -> None:
    _assert_paths_agree(cls, kwargs, torch.float64, steps=9, rtol=1e-12, atol=1e-12)


@needs_fused
@pytest.mark.parametrize('cls,kwargs', CASES, ids=IDS)
def test_fused_equals_loop_float32_many_steps(cls: type, kwargs: dict[str, Any],
                                              kernel: str) -> None:
    """A few ulp (float32 eps = 1.2e-7) after 30 steps."""
    _assert_paths_agree(cls, kwargs, torch.float32, steps=30, rtol=5e-7, atol=5e-7)


@pytest.mark.parametrize('cls,kwargs', [CASES[1], CASES[7]], ids=['SGD', 'AdamW'])
def test_native_kernels_on_threads_equal_one_thread(monkeypatch: pytest.MonkeyPatch, cls: type,
                                                    kwargs: dict[str, Any]) -> None:
    """With two torch threads the tensors are cut into pieces run on a thread pool: the
    result is the one-thread result, bit for bit."""
    kernels = native_kernels()
    if kernels is None:
        pytest.skip('no working C compiler: the native CPU kernels are not built')
    params = make_params([(7, 9), (40,), (3, 3)], dtype=torch.float32)
    copies = clone_params(params)
    _run(cls(params, fused=True, **kwargs), params, range(4))
    monkeypatch.setattr(type(kernels), '_SLICE', 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _run(cls(copies, fused=True, **kwargs), copies, range(4))
    finally:
        torch.set_num_threads(threads)
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_native_kernels_without_a_compiler(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Any) -> None:
    """No C compiler: said once in a warning, then torch's kernel + review (None here)."""
    from dualopt_mm.optim import native

    monkeypatch.setenv('DUALOPT_MM_CACHE', str(tmp_path))
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    native.native_kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match='the CPU kernels could not be built'):
            assert native.native_kernels() is None
    finally:
        native.native_kernels.cache_clear()


@needs_cpu_fused
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('cls,kwargs', [CASES[0], CASES[6], CASES[7]], ids=['SGD', 'AdamW',
                                                                           'AdamW-bf16-anchor'])
def test_fused_16_bit_params(cls: type, kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    """16-bit parameters: torch's kernel computes in float32 and rounds once, the loop rounds
    every operation; they agree within a few roundings of the dtype. (Where the probe finds
    torch's kernel wrong for a dtype, e.g. torch 2.13's CPU SGD on 16-bit tensors, the fused
    setting runs the foreach path: then they agree exactly.)"""
    eps = torch.finfo(dtype).eps
    _assert_paths_agree(cls, kwargs, dtype, steps=5, rtol=4 * eps, atol=eps, margin=4)


@needs_fused
def test_reference_adamb_fused_equals_loop() -> None:
    """reference=True: the group's step count in the bias corrections, tensor-order levels."""
    params = make_params([(3, 4), (4,), (2, 3), (3, 3)])
    copies = clone_params(params)
    kwargs = dict(lr=1e-2, reference=True, k_unit='absolute', k_max=40.0, k_min=5.0)
    loop = DualOptAdam(params, foreach=False, **kwargs)
    fused_opt = DualOptAdam(copies, fused=True, **kwargs)
    for step in range(6):
        set_grads(params, step, {1} if step == 2 else None)
        set_grads(copies, step, {1} if step == 2 else None)
        loop.step()
        fused_opt.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)
    assert fused_opt.param_groups[0]['reference_step'] == 6


@needs_cpu_fused
@pytest.mark.parametrize('cls,kwargs', [CASES[1], CASES[7]], ids=['SGD', 'AdamW'])
def test_large_tensors_cut_into_slices(monkeypatch: pytest.MonkeyPatch, cls: type,
                                       kwargs: dict[str, Any]) -> None:
    """torch's kernel in chunks of 16 elements: tensors are cut into flat slices (state, bf16
    anchors too), a non-contiguous one is a chunk alone; the result is the unsliced one's,
    bit for bit."""
    _use_torch_kernel(monkeypatch)
    params = make_params([(7, 9), (40,), (3, 3)], dtype=torch.float32)
    params[0] = params[0].detach().t().requires_grad_()  # not contiguous
    copies = clone_params(params)
    whole = cls(params, fused=True, **kwargs)
    _run(whole, params, range(5))
    monkeypatch.setattr(fused, 'FUSED_CHUNK_NUMEL_CPU', 16)
    sliced = cls(copies, fused=True, **kwargs)
    _run(sliced, copies, range(5))
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


@needs_cpu_fused
@needs_amp_grad_scaler
@pytest.mark.parametrize('cls', [DualOptSGD, DualOptAdamW])
def test_grad_scaler_inf_step_skips_learning_and_review(cls: type) -> None:
    """GradScaler hands the fused step grad_scale / found_inf (_step_supports_amp_scaling):
    an overflowing iteration changes nothing; a finite one unscales and steps as the loop."""
    params = make_params([(3, 3), (4,)], dtype=torch.float32)
    reference = clone_params(params)
    kwargs = dict(lr=0.1, k_max=0.5, momentum=0.9) if cls is DualOptSGD else dict(
        lr=0.1, k_max=0.5)
    opt = cls(params, fused=True, **kwargs)
    loop = cls(reference, foreach=False, **kwargs)
    assert opt._step_supports_amp_scaling and not loop._step_supports_amp_scaling
    scaler = torch.amp.GradScaler('cpu', init_scale=4.0)
    before = clone_params(params)
    scaler.scale(params[0].sum() * float('inf') + params[1].sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and len(opt.state) == 0
    for _ in range(3):  # finite iterations: the same steps as the loop's
        opt.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(params, [torch.ones(3, 3), torch.ones(4)]))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        for p in reference:
            p.grad = torch.ones_like(p)
        loop.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=5e-7, atol=5e-7)
    assert float(opt.state[params[0]]['step' if cls is DualOptAdamW else 'anchor'].sum()) != 0


@needs_cpu_fused
@pytest.mark.parametrize('functional', ['adam', 'sgd'])
def test_device_found_inf_masks_the_step_and_the_review(functional: str) -> None:
    """found_inf kept on the device (what an accelerator's GradScaler step gets): the kernel
    skips, the review weights are masked and the step counts taken back, without a host read;
    found_inf = 0 steps as without it. Exercised on CPU tensors through the functionals."""
    from dualopt_mm.optim.adam_functional import ADAM_FUNCTIONALS
    from dualopt_mm.optim.sgd_functional import SGD_FUNCTIONALS

    def run(found_inf: Any) -> list[torch.Tensor]:
        params = make_params([(3, 3), (5,)], dtype=torch.float32)
        set_grads(params, 0)
        anchors = [p.detach() + 1.0 for p in params[:1]] + [None]
        grads = [p.grad for p in params]
        common = dict(lrs=[0.1, 0.1], weight_decays=[0.0, 0.01], anchors=anchors,
                      review_weights=[0.3, 0.2], found_inf=found_inf)
        with torch.no_grad():
            if functional == 'adam':
                steps = [torch.zeros(()) for _ in params]
                ADAM_FUNCTIONALS['fused'](
                    params, grads, [torch.zeros_like(p) for p in params],
                    [torch.zeros_like(p) for p in params], [], steps, bias_steps=None,
                    beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=False, maximize=False,
                    decoupled_weight_decay=True, **common)
                return params + steps
            SGD_FUNCTIONALS['fused'](params, grads, [None, None], momentum=0.9, dampening=0.0,
                                     nesterov=False, maximize=False, **common)
            return params

    start = make_params([(3, 3), (5,)], dtype=torch.float32)
    skipped = run(torch.ones(()))
    for p, q in zip(skipped, start):
        assert torch.equal(p, q)
    if functional == 'adam':
        assert all(float(s) == 0 for s in skipped[2:])
    stepped, plain = run(torch.zeros(())), run(None)
    for p, q in zip(stepped, plain):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-7)
    assert not torch.equal(stepped[0], start[0])


def _round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@needs_fused
@pytest.mark.parametrize('first,then', [('fused', 'loop'), ('loop', 'fused'),
                                        ('fused', 'foreach')])
@pytest.mark.parametrize('cls,kwargs', [CASES[0], CASES[4], CASES[7]], ids=['SGD', 'Adam',
                                                                           'AdamW'])
def test_state_dict_moves_between_paths(cls: type, kwargs: dict[str, Any], first: str,
                                        then: str) -> None:
    """A checkpoint of one path resumes on another: same state keys, step counts as torch
    keeps them (fused: float32 tensors on the parameter's device), the same trajectory as an
    uninterrupted run of the second path (float64, 1e-12); the path stays the optimizer's."""
    flags = dict(loop=dict(foreach=False), foreach=dict(foreach=True), fused=dict(fused=True))
    params = make_params(SHAPES)
    saved_params = clone_params(params)
    writer = cls(mixed_review_groups(params), **flags[first], **kwargs)
    _run(writer, params, range(5))
    saved = _round_trip(writer.state_dict())
    for p, q in zip(saved_params, params):
        p.data.copy_(q)
    uninterrupted_params = clone_params(saved_params)
    uninterrupted = cls(mixed_review_groups(uninterrupted_params), **flags[then], **kwargs)
    uninterrupted.load_state_dict(saved)
    resumed = cls(mixed_review_groups(saved_params), **flags[then], **kwargs)
    resumed.load_state_dict(_round_trip(saved))
    assert bool(resumed.param_groups[0]['fused']) == (then == 'fused')
    _run(resumed, saved_params, range(5, 10))
    _run(uninterrupted, uninterrupted_params, range(5, 10))
    for p, q in zip(saved_params, uninterrupted_params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    for p_written, p_resumed in zip(params, saved_params):
        assert set(writer.state[p_written]) == set(resumed.state[p_resumed])
        step = resumed.state[p_resumed].get('step')
        if step is not None and then == 'fused':  # as torch's fused Adam keeps it
            assert step.dtype == torch.float32 and step.device == p_resumed.device


def test_fused_without_torch_kernel_says_so_once_and_runs_foreach(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a torch without the fused kernel (CPU kernels came with torch 2.4) and without the
    native kernels: one warning per class, device and dtype, then the foreach path, bit for
    bit; GradScaler then skips by itself."""
    monkeypatch.setattr(base, 'fused_kernel', lambda name, device_type, dtype: None)
    monkeypatch.setattr(base, 'native_kernels', lambda: None)
    monkeypatch.setattr(base, '_told_no_fused', set())
    params = make_params(SHAPES)
    copies = clone_params(params)
    with pytest.warns(UserWarning, match=r'DualOptAdamW\(fused=True\): torch [0-9.]+ has no '
                                         r'working fused adamw kernel for cpu float64 tensors'
                                         r'.*foreach path'):
        opt = DualOptAdamW(mixed_review_groups(params), fused=True, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        DualOptAdamW(copies[:1], fused=True)  # said once per process
    assert not opt._step_supports_amp_scaling
    foreach = DualOptAdamW(mixed_review_groups(copies), foreach=True, lr=1e-2)
    _run(opt, params, range(4))
    _run(foreach, copies, range(4))
    assert all(torch.equal(p, q) for p, q in zip(params, copies))


@needs_fused
def test_sparse_gradients_take_the_loop_under_fused() -> None:
    params = [torch.zeros(5, 2, dtype=torch.float64, requires_grad=True)]
    copies = clone_params(params)
    fused_opt = DualOptSGD(params, lr=0.1, fused=True, momentum=0.9)
    loop = DualOptSGD(copies, lr=0.1, foreach=False, momentum=0.9)
    for p in params + copies:
        p.grad = torch.sparse_coo_tensor([[1, 3]], torch.ones(2, 2, dtype=torch.float64),
                                         (5, 2))
    fused_opt.step()
    loop.step()
    assert torch.equal(params[0], copies[0])


def test_stock_fused_kwargs_switch_by_the_type_line() -> None:
    """What a stock config with fused=True passes: accepted by all three (fused=None and
    False too), stored in the groups, refused with foreach=True as torch does."""
    params = make_params([(2, 2)])
    for cls, kwargs in [(DualOptSGD, dict(lr=0.02, momentum=0.9, weight_decay=1e-4)),
                        (DualOptAdam, dict(lr=1e-4, amsgrad=False)),
                        (DualOptAdamW, dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05))]:
        for flag in (True, False, None):
            opt = cls(params, fused=flag, **kwargs)
            assert opt.param_groups[0]['fused'] is flag
        with pytest.raises(ValueError, match='fused=True and foreach=True cannot be set'):
            cls(params, fused=True, foreach=True, **kwargs)


def test_kernel_probe_checks_the_result() -> None:
    """The probe runs the kernel and checks the step against the formula: a kernel that
    leaves the tensor unchanged (torch 2.13's CPU SGD on 16-bit tensors) is not used."""
    for dtype in (torch.float32, torch.float64):
        kernel = fused_kernel('adamw', 'cpu', dtype)
        assert kernel is None or kernel is torch._fused_adamw_
    kernel = fused_kernel('sgd', 'cpu', torch.bfloat16)
    if kernel is not None:  # a torch whose kernel is right: it really steps 16-bit tensors
        p = torch.ones(64, dtype=torch.bfloat16)
        kernel([p], [torch.ones_like(p)], [], weight_decay=0.0, momentum=0.0, lr=0.5,
               dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
        assert torch.equal(p, torch.full_like(p, 0.5))
    assert fused_kernel('adamw', 'no_such_device') is None


@pytest.mark.parametrize('cls,kwargs', [CASES[1], CASES[7]], ids=['SGD', 'AdamW'])
def test_native_kernels_without_torch_kernels(monkeypatch: pytest.MonkeyPatch, cls: type,
                                              kwargs: dict[str, Any]) -> None:
    """torch 2.0 / 2.1 (no CPU fused kernels) with a C compiler: fused=True takes the native
    kernels, silently; a tensor they cannot take (not contiguous) the foreach path; the
    result is the loop's; GradScaler is left to skip inf steps itself."""
    if native_kernels() is None:
        pytest.skip('no working C compiler: the native CPU kernels are not built')
    for module in (base, adam_functional, sgd_functional, fused):
        monkeypatch.setattr(module, 'fused_kernel', lambda name, device_type, dtype=None: None)
    params = make_params([(7, 9), (40,), (3, 3)], dtype=torch.float32)
    params[0] = params[0].detach().t().requires_grad_()  # not contiguous: foreach
    copies = clone_params(params)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        opt = cls(params, fused=True, **kwargs)
    assert not opt._step_supports_amp_scaling
    _run(opt, params, range(5))
    _run(cls(copies, foreach=False, **kwargs), copies, range(5))
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=5e-7, atol=5e-7)


def test_native_kernels_build_once_and_say_how_long(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Any) -> None:
    """A fresh cache folder: the kernels are compiled (the log line gives the seconds), then
    a new process finds them there and only loads them."""
    from dualopt_mm.optim import native

    if native_kernels() is None:
        pytest.skip('no working C compiler: the native CPU kernels are not built')
    lines: list[str] = []
    monkeypatch.setattr(native, '_log', lines.append)
    monkeypatch.setenv('DUALOPT_MM_CACHE', str(tmp_path))
    native.native_kernels.cache_clear()
    try:
        assert native.native_kernels() is not None
        native.native_kernels.cache_clear()  # as a new process would
        assert native.native_kernels() is not None
    finally:
        native.native_kernels.cache_clear()
    assert len(lines) == 2 and len(list(tmp_path.glob('fused_cpu_*.so'))) == 1
    assert re.match(r'DualOpt fused=True: CPU kernels compiled in [0-9.]+ s', lines[0])
    assert re.match(r'DualOpt fused=True: CPU kernels loaded in [0-9.]+ s', lines[1])
