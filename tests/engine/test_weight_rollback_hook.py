"""WeightRollbackHook with a real mmengine Runner on the toy detector (CPU, seconds)."""
import glob
import json
import os.path as osp

import pytest
import torch
from engine_runner import hook_of, make_toy_runner, model_state, toy_model
from engine_toys import BACKBONE_NAMES, HEAD_NAMES
from torch_versions import needs_amp_grad_scaler

from dualopt_mm.engine.hooks.weight_rollback_hook import CHECKPOINT_KEY
from dualopt_mm.optim import DualOptSGD


def write_checkpoint(path, state_dict):
    torch.save(dict(state_dict=state_dict, meta=dict()), path)
    return str(path)


def pretrained_state(seed=5, prefix='', drop=(), **reshape):
    """Random "pretrained" weights of the toy detector (every float tensor drawn anew) as a
    checkpoint state dict, keys under ``prefix`` (stripped) except those starting with
    ``drop``; ``name__weight=shape`` replaces a tensor by zeros of another shape."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.1 + v
                 if v.is_floating_point() else v)
             for k, v in toy_model().state_dict().items()}
    state = {k: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(drop)}
    state = {k[len(prefix):]: v for k, v in state.items()}
    for key, shape in reshape.items():
        state[key.replace('__', '.')] = torch.zeros(shape)
    return state


def groups_by_name(runner):
    return {g['param_name']: g for g in runner.optim_wrapper.optimizer.param_groups}


def anchors_by_name(runner):
    optimizer = runner.optim_wrapper.optimizer
    return {g['param_name']: optimizer.state[g['params'][0]].get('anchor')
            for g in optimizer.param_groups}


# ------------------------------------------------------------------------------- θ_0 source


def test_theta0_is_load_from_checkpoint_and_filled_heads_join(toy_runner, tmp_path):
    ckpt_state = pretrained_state()
    path = write_checkpoint(tmp_path / 'full.pth', ckpt_state)
    runner = toy_runner(load_from=path, max_iters=1)
    initial = model_state(runner)
    runner.train()
    anchors, groups = anchors_by_name(runner), groups_by_name(runner)
    for name in BACKBONE_NAMES + HEAD_NAMES:
        assert torch.equal(anchors[name], ckpt_state[name]), name
        assert not torch.equal(anchors[name], initial[name]), name
    # load_from filled neck and head too: refined from 'none' to 'finetune', 6 layers
    assert [(groups[n]['mode'], groups[n]['layer_id'], groups[n]['num_layers'])
            for n in ('backbone.conv1.weight', 'neck.bias', 'head.weight')] == [
                ('finetune', 0, 6), ('finetune', 4, 6), ('finetune', 5, 6)]


def test_unfilled_tensors_stay_new(toy_runner, tmp_path):
    # head missing from the checkpoint, neck with another shape: both stay plain
    state = pretrained_state(drop=('head', 'neck'), neck__weight=(4, 8, 1, 1))
    path = write_checkpoint(tmp_path / 'partial.pth', state)
    runner = toy_runner(load_from=path, max_iters=1)
    runner.train()
    groups, anchors = groups_by_name(runner), anchors_by_name(runner)
    assert [groups[n]['mode'] for n in HEAD_NAMES] == ['none'] * 4
    assert [anchors[n] for n in HEAD_NAMES] == [None] * 4
    assert groups['backbone.layer2.0.conv1.weight']['layer_id'] == 3
    assert groups['backbone.layer2.0.conv1.weight']['num_layers'] == 4


@pytest.mark.parametrize('prefix', [None, 'backbone'])
def test_theta0_is_init_cfg_pretrained_checkpoint(tmp_path, prefix):
    if prefix is None:  # a backbone checkpoint (keys relative to the backbone), no layer2
        state = pretrained_state(prefix='backbone.', drop=('backbone.layer2', ))
    else:  # a whole-model checkpoint read through prefix='backbone' (mmpretrain style)
        state = pretrained_state(drop=('backbone.layer2', ))
    path = write_checkpoint(tmp_path / 'backbone.pth', state)
    init_cfg = dict(type='Pretrained', checkpoint=path)
    if prefix:
        init_cfg['prefix'] = prefix
    model = toy_model(backbone_init_cfg=init_cfg)
    initial = model_state_of(model)
    runner = make_toy_runner(str(tmp_path / 'work'), model=model, max_iters=1)
    runner.train()
    anchors, groups = anchors_by_name(runner), groups_by_name(runner)
    for name in BACKBONE_NAMES[:9]:
        key = name if prefix else name[len('backbone.'):]
        assert torch.equal(anchors[name], state[key]), name
        assert not torch.equal(anchors[name], initial[name]), name
    # layer2 was not in the checkpoint: not reviewed, and the ramp spans 3 layers now
    assert [groups[n]['mode'] for n in BACKBONE_NAMES[9:]] == ['none'] * 6
    assert [(groups[n]['layer_id'], groups[n]['num_layers'])
            for n in ('backbone.bn1.bias', 'backbone.layer1.1.conv1.weight')] == [(0, 3), (2, 3)]
    optimizer = runner.optim_wrapper.optimizer
    levels = {id(p): k for p, _, _, k in optimizer.review_levels()}
    assert levels[id(groups['backbone.layer1.0.conv1.weight']['params'][0])] == 0.005


def test_init_cfg_with_foreign_keys_counts_the_whole_module(tmp_path):
    """A backbone that converts foreign checkpoint keys in its own init_weights (mmdet's Swin
    with convert_weights=True): no name matches, so all of the module counts as filled."""
    state = {f'foreign.{k}': v for k, v in pretrained_state(prefix='backbone.').items()}
    path = write_checkpoint(tmp_path / 'foreign.pth', state)
    model = toy_model(backbone_init_cfg=dict(type='Pretrained', checkpoint=path))
    runner = make_toy_runner(str(tmp_path / 'work'), model=model, max_iters=1)
    runner.train()
    groups = groups_by_name(runner)
    assert [groups[n]['mode'] for n in BACKBONE_NAMES] == ['finetune'] * 15
    assert [groups[n]['mode'] for n in HEAD_NAMES] == ['none'] * 4
    assert groups['backbone.layer2.0.conv1.weight']['num_layers'] == 4


def model_state_of(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ------------------------------------------------------------------- what is rolled back


def test_new_layers_get_the_plain_step_and_frozen_stay(tmp_path):
    state = pretrained_state(prefix='backbone.')
    path = write_checkpoint(tmp_path / 'backbone.pth', state)

    def run(name, **kwargs):
        model = toy_model(backbone_init_cfg=dict(type='Pretrained', checkpoint=path))
        for p in model.backbone.conv1.parameters():
            p.requires_grad_(False)  # a frozen stem
        runner = make_toy_runner(str(tmp_path / name), model=model, max_iters=1, **kwargs)
        runner.train()
        return model_state(runner)

    dualopt = run('dualopt')
    plain = run('plain', constructor=None, hooks=[])
    for name in HEAD_NAMES:  # one identical first step: the review never touched them
        assert torch.equal(dualopt[name], plain[name]), name
    for name in ('backbone.bn1.weight', 'backbone.layer1.0.conv1.weight'):
        assert not torch.equal(dualopt[name], plain[name]), name
    assert torch.equal(dualopt['backbone.conv1.weight'], state['conv1.weight'])
    assert torch.equal(plain['backbone.conv1.weight'], state['conv1.weight'])


def test_hook_review_matches_dualopt_optimizer(tmp_path):
    path = write_checkpoint(tmp_path / 'full.pth', pretrained_state(drop=('head', )))

    def run(name, **kwargs):
        runner = make_toy_runner(str(tmp_path / name), load_from=path, max_iters=4, **kwargs)
        runner.train()
        return runner

    ours = run('ours')
    assert type(ours.optim_wrapper.optimizer) is DualOptSGD
    hooked = run('hooked', paramwise_cfg=dict(dualopt=dict(swap_optimizer=False)),
                 hooks=[dict(type='WeightRollbackHook', review=True, interval=1)])
    assert type(hooked.optim_wrapper.optimizer) is torch.optim.SGD
    # the default constructor (one group, nothing annotated): the hook decides itself
    bare = run('bare', constructor=None,
               hooks=[dict(type='WeightRollbackHook', review=True, interval=1)])
    plain = run('plain', constructor=None, hooks=[])
    expected = model_state(ours)
    for runner in (hooked, bare):
        got = model_state(runner)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(model_state(plain)['backbone.conv1.weight'],
                              expected['backbone.conv1.weight'])
    with pytest.raises(ValueError, match='review step itself'):
        run('twice', hooks=[dict(type='WeightRollbackHook', review=True)])


@needs_amp_grad_scaler
def test_amp_skipped_step_skips_the_review(tmp_path):
    """A GradScaler step with inf gradients calls no optimizer.step(): no review either."""
    path = write_checkpoint(tmp_path / 'full.pth', pretrained_state())
    runner = make_toy_runner(str(tmp_path / 'amp'), load_from=path, max_iters=1,
                             paramwise_cfg=dict(dualopt=dict(swap_optimizer=False)),
                             hooks=[dict(type='WeightRollbackHook', review=True)])
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    runner.load_or_resume()
    hook = hook_of(runner)
    hook.before_train(runner)
    optimizer = runner.optim_wrapper.optimizer
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0**4)
    model = runner.model
    batch = next(iter(runner.build_dataloader(runner._train_dataloader)))

    def backward(poison):
        optimizer.zero_grad()
        loss = model(batch['inputs'], batch['labels'], mode='loss')['loss']
        scaler.scale(loss).backward()
        if poison:
            model.backbone.conv1.weight.grad[0, 0, 0, 0] = float('inf')

    before = model_state(runner)
    backward(poison=True)
    scaler.step(optimizer)
    scaler.update()
    after_skip = model_state(runner)
    assert all(torch.equal(before[k], after_skip[k]) for k in before)
    assert scaler.get_scale() == 2.0**3  # the scaler backed off

    backward(poison=False)
    scaler.unscale_(optimizer)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    scaler.step(optimizer)
    scaler.update()
    # expected: torch SGD's first step (momentum buffer = grad + wd θ), then the rollback
    lr = optimizer.param_groups[0]['lr']  # warm-up: 0.05 of base 0.1 -> λ = k_i / 2
    theta = before['backbone.conv1.weight']
    theta_hat = theta - lr * (grads['backbone.conv1.weight'] + 1e-4 * theta)
    anchor = hook.anchors['backbone.conv1.weight']
    expected = theta_hat + (lr / 0.1) * 0.01 * (anchor - theta_hat)
    torch.testing.assert_close(model.backbone.conv1.weight.detach(), expected,
                               rtol=1e-6, atol=1e-8)
    hook.after_train(runner)


# -------------------------------------------------------------------------------- resume


@pytest.mark.parametrize('setup', ['dualopt', 'hook_review', 'bare_hook_review'])
def test_resume_is_exact(tmp_path, setup):
    path = write_checkpoint(tmp_path / 'full.pth', pretrained_state(drop=('head', )))
    kwargs = dict(dualopt={}, hook_review=dict(
        paramwise_cfg=dict(dualopt=dict(swap_optimizer=False)),
        hooks=[dict(type='WeightRollbackHook', review=True, interval=1)]),
        bare_hook_review=dict(constructor=None, hooks=[
            dict(type='WeightRollbackHook', review=True, interval=1)]))[setup]

    full = make_toy_runner(str(tmp_path / 'full'), load_from=path, max_iters=4, **kwargs)
    full.train()
    first = make_toy_runner(str(tmp_path / 'part'), load_from=path, max_iters=2, **kwargs)
    first.train()
    second = make_toy_runner(str(tmp_path / 'part'), load_from=str(tmp_path / 'part/iter_2.pth'),
                             resume=True, max_iters=4, **kwargs)
    second.train()

    expected, got = model_state(full), model_state(second)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    full_state = full.optim_wrapper.optimizer.state_dict()
    resumed_state = second.optim_wrapper.optimizer.state_dict()
    # every key of the uninterrupted run's groups (torch's __setstate__ may add bookkeeping
    # keys such as 'differentiable' to loaded groups)
    assert full_state['param_groups'] == [{k: g[k] for k in f}
                                          for f, g in zip(full_state['param_groups'],
                                                          resumed_state['param_groups'])]
    for index, state in full_state['state'].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value),
                               torch.as_tensor(resumed_state['state'][index][key])), (index, key)
    full_hook, resumed_hook = hook_of(full), hook_of(second)
    assert full_hook.anchors.keys() == resumed_hook.anchors.keys()
    assert all(torch.equal(full_hook.anchors[k], resumed_hook.anchors[k])
               for k in full_hook.anchors)
    # θ_0 is still the checkpoint, not the weights at iteration 2
    loaded = pretrained_state()
    if setup == 'dualopt':
        anchors = anchors_by_name(second)
        assert torch.equal(anchors['backbone.conv1.weight'], loaded['backbone.conv1.weight'])
    else:
        assert torch.equal(resumed_hook.anchors['backbone.conv1.weight'],
                           loaded['backbone.conv1.weight'])
        saved = torch.load(str(tmp_path / 'part/iter_2.pth'), weights_only=False)
        assert set(saved[CHECKPOINT_KEY]['anchors']) == set(full_hook.anchors)


# -------------------------------------------------------------------- logs and checks


def test_drift_scalars_and_levels_file(toy_runner, tmp_path):
    path = write_checkpoint(tmp_path / 'full.pth', pretrained_state(drop=('head', 'neck')))
    runner = toy_runner(load_from=path, max_iters=2,
                        hooks=[dict(type='WeightRollbackHook', interval=2)])
    runner.train()
    run_dir = sorted(d for d in glob.glob(osp.join(str(tmp_path), 'run', '2*'))
                     if osp.isdir(d))[-1]
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        records = [json.loads(line) for line in f]
    assert 'drift/all' not in records[0]  # interval=2: logged at iteration 2 only
    drift_keys = sorted(k for k in records[1] if k.startswith('drift/'))
    assert drift_keys == ['drift/all', 'drift/backbone.layer1.0', 'drift/backbone.layer1.1',
                          'drift/backbone.layer2.0', 'drift/backbone.stem']
    # the logged value is ‖θ − θ_0‖ / ‖θ_0‖ of the block at that iteration
    state, loaded = model_state(runner), pretrained_state()
    names = [n for n in BACKBONE_NAMES if n.startswith('backbone.layer1.0')]
    num = sum(float((state[n].double() - loaded[n].double()).norm())**2 for n in names)
    den = sum(float(loaded[n].double().norm())**2 for n in names)
    assert records[1]['drift/backbone.layer1.0'] == pytest.approx((num / den)**0.5, rel=1e-6)
    with open(osp.join(run_dir, 'dualopt_levels.json')) as f:
        rows = json.load(f)
    assert rows[3] == dict(name='backbone.layer1.0.conv1.weight', block='backbone.layer1.0',
                           layer_id=1, num_layers=4, level=pytest.approx(0.01 * 2 / 3),
                           lr=0.1, weight_decay=1e-4, mode='finetune')
    assert rows[-1] == dict(name='head.bias', block='head', layer_id=None, num_layers=None,
                            level=None, lr=0.1, weight_decay=1e-4, mode='none')


@pytest.mark.parametrize('scheduler, dualopt, message', [
    # absolute k: lambda = peak lr * k_max = 0.3 * 5 at OneCycle's peak
    (dict(type='OneCycleLR', eta_max=0.3, total_steps=10, by_epoch=False),
     dict(k_unit='absolute', k_max=5.0), 'lambda = 1.5 > 1'),
    # base_lr unit: OneCycle starts at eta_max / 25, which becomes base_lr (initial_lr), so
    # lambda = 25 * k_max at the peak (set the optimizer's base_lr to eta_max instead)
    (dict(type='OneCycleLR', eta_max=0.3, total_steps=10, by_epoch=False),
     dict(k_max=0.1), 'lambda = 2.5 > 1'),
])
def test_lambda_check_at_the_schedule_peak(toy_runner, scheduler, dualopt, message):
    runner = toy_runner(max_iters=1, param_scheduler=[scheduler],
                        paramwise_cfg=dict(dualopt=dualopt))
    with pytest.raises(ValueError, match=message):
        runner.train()
    runner = toy_runner('warn', max_iters=1, param_scheduler=[scheduler],
                        paramwise_cfg=dict(dualopt=dualopt),
                        hooks=[dict(type='WeightRollbackHook', check_lambda='warn')])
    runner.train()  # warned only; the first steps are below the peak


@pytest.mark.parametrize('kwargs, message', [
    (dict(interval=-1), 'interval=-1'),
    (dict(check_lambda='raise'), "'raise'.*'error', 'warn', 'off'"),
    (dict(mode='none'), "mode='none'"),
    (dict(layer_index='depth'), "'depth'"),
    (dict(pretrained='heads'), "pretrained='heads'"),
    (dict(gamma=-1.0), 'gamma=-1.0'),
])
def test_hook_argument_errors(kwargs, message):
    from dualopt_mm.engine import WeightRollbackHook
    with pytest.raises(ValueError, match=message):
        WeightRollbackHook(**kwargs)


# ------------------------------------------------------- a stock run switched by resume
def _stock_run_then_dualopt_resume(tmp_path, with_init_cfg: bool):
    state = pretrained_state(prefix='backbone.')
    path = write_checkpoint(tmp_path / 'backbone.pth', state)
    init_cfg = dict(type='Pretrained', checkpoint=path) if with_init_cfg else None
    work = str(tmp_path / 'work')
    # a stock AdamW config with paramwise_cfg: one param group per tensor, like ours
    stock = make_toy_runner(work, model=toy_model(backbone_init_cfg=init_cfg), constructor=None,
                            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                            paramwise_cfg=dict(norm_decay_mult=0.0), hooks=[], max_iters=2)
    stock.train()
    mid_training = model_state(stock)
    switched = make_toy_runner(work, model=toy_model(backbone_init_cfg=init_cfg),
                               optimizer=dict(type='DualOptAdamW', lr=1e-3),
                               load_from=osp.join(work, 'iter_2.pth'), resume=True, max_iters=3)
    return state, mid_training, switched


def test_resume_from_stock_optimizer_takes_theta0_from_pretrained(tmp_path):
    state, mid_training, runner = _stock_run_then_dualopt_resume(tmp_path, with_init_cfg=True)
    runner.train()
    anchors, groups = anchors_by_name(runner), groups_by_name(runner)
    for name in BACKBONE_NAMES:
        assert torch.equal(anchors[name], state[name[len('backbone.'):]]), name
        assert not torch.equal(anchors[name], mid_training[name]), name
    # the constructor's split survives the load of torch AdamW's groups: heads not reviewed
    assert [groups[n]['mode'] for n in HEAD_NAMES] == ['none'] * len(HEAD_NAMES)
    assert all(anchors[n] is None for n in HEAD_NAMES)


def test_resume_from_a_single_group_checkpoint_says_what_to_do(tmp_path):
    work = str(tmp_path / 'work')
    make_toy_runner(work, constructor=None, optimizer=dict(type='SGD', lr=0.1), hooks=[],
                    max_iters=2).train()
    runner = make_toy_runner(work, optimizer=dict(type='DualOptSGD', lr=0.1),
                             load_from=osp.join(work, 'iter_2.pth'), resume=True, max_iters=3)
    with pytest.raises(ValueError, match=r'1 param groups, this optimizer 19.*load_from'):
        runner.train()


def test_resume_from_stock_optimizer_without_pretrained_source_stops(tmp_path):
    _, _, runner = _stock_run_then_dualopt_resume(tmp_path, with_init_cfg=False)
    with pytest.raises(RuntimeError, match=r'no theta_0 .* no pretrained checkpoint'):
        runner.train()
