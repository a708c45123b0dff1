"""DualOpt through mmengine's ``FlexibleRunner`` + ``DeepSpeedStrategy`` (ZeRO stage 1 and 2)
on 2 CPU gloo processes, with the one-line constructor switch, ``WeightRollbackHook`` and the
toy backbone's weights from ``init_cfg=Pretrained`` (mmengine's DeepSpeed ``load_from`` reads
DeepSpeed checkpoint folders only):

- DeepSpeed's flat fp32 partitions: rank r's partition of each one-tensor group holds
  elements ``[r·P, (r+1)·P)`` of that tensor; θ_0 on the two ranks put together is the
  pretrained tensor, and the groups keep their modes and layer ids;
- the weights after 4 steps equal one process reading the same batches (gradient
  accumulation) to float32 tolerance, and so do the drift logs (added over the ranks);
- a run saved at step 2 and resumed (DeepSpeed's per-rank optimizer files, θ_0 in them) ends
  like the uninterrupted one;
- the settings that cannot be right on flat partitions are refused at build time.

Needs ``deepspeed`` (0.19.6 with mmengine 0.10.7: ``pip install 'dualopt_mm[deepspeed]'``).
"""
import os
import types

import pytest
import torch

from dualopt_mm.engine.strategies.deepspeed import check_deepspeed_strategy

STEPS, SAVE_AT = 4, 2


def _pretrained(path) -> dict:
    from engine_runner import toy_model
    generator = torch.Generator().manual_seed(5)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.1 + v
                 if v.is_floating_point() else v)
             for k, v in toy_model().state_dict().items() if k.startswith('backbone.')}
    torch.save(dict(state_dict=state, meta=dict()), str(path))
    return state


def _model(checkpoint: str):
    from engine_runner import toy_model
    return toy_model(backbone_init_cfg=dict(type='Pretrained', checkpoint=checkpoint,
                                            prefix='backbone.'))


def _summary(runner) -> dict:
    from flexible_runner import hook_of
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    scalars = runner.message_hub.log_scalars
    return dict(
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        drift={k[len('train/drift/'):]: v.current() for k, v in scalars.items()
               if k.startswith('train/drift/')},
        groups=[(g['param_name'], g['mode'], g['layer_id'], g['num_layers'])
                for g in runner.optim_wrapper.optimizer.param_groups],
        anchors=hook_of(runner, 'AnchorProbeHook').anchors)


def _deepspeed_worker(rank: int, stage: int, work_dir: str, checkpoint: str) -> None:
    import torch.distributed as dist
    from flexible_runner import make_flexible_runner

    from dualopt_mm.engine.strategies import DeepSpeedAdapter
    out = {}
    for name, iters, resume in (('full', STEPS, False), ('part', SAVE_AT, False),
                                ('part', STEPS, True)):
        runner = make_flexible_runner(
            os.path.join(work_dir, name), max_iters=iters, checkpoint_interval=SAVE_AT,
            strategy=dict(type='DeepSpeedStrategy', zero_optimization=dict(stage=stage)),
            model=_model(checkpoint), resume=resume,
            load_from=os.path.join(work_dir, 'part', f'iter_{SAVE_AT}.pth') if resume else None)
        runner.train()
        out[f'{name}{iters}'] = _summary(runner)
        if name == 'full':
            out['slices'] = DeepSpeedAdapter.partition_slices(runner.optim_wrapper.optimizer)
            out['inner'] = type(runner.optim_wrapper.optimizer.optimizer).__name__
        dist.barrier()
    torch.save(out, os.path.join(work_dir, f'rank{rank}.pt'))


@pytest.fixture(scope='module', params=[1, 2], ids=['zero1', 'zero2'])
def deepspeed_runs(request, tmp_path_factory):
    pytest.importorskip('deepspeed', reason='DeepSpeed is not installed (pip install '
                        "'dualopt_mm[deepspeed]')")
    from flexible_runner import INTERLEAVED, InterleavedToyData, make_flexible_runner, spawn_ranks
    tmp = tmp_path_factory.mktemp(f'deepspeed_zero{request.param}')
    checkpoint = str(tmp / 'pretrained.pth')
    state = _pretrained(checkpoint)
    work_dir = str(tmp / 'work')
    os.makedirs(work_dir)
    spawn_ranks(_deepspeed_worker, (request.param, work_dir, checkpoint))
    ranks = [torch.load(os.path.join(work_dir, f'rank{r}.pt'), weights_only=False)
             for r in range(2)]
    single = make_flexible_runner(str(tmp / 'single'), max_iters=2 * STEPS,
                                  checkpoint_interval=100, model=_model(checkpoint),
                                  accumulative_counts=2, launcher='none',
                                  dataset=InterleavedToyData(INTERLEAVED))
    single.train()
    return dict(ranks=ranks, single=_summary(single), state=state)


@pytest.mark.slow
def test_theta0_on_the_flat_partitions(deepspeed_runs):
    state, single = deepspeed_runs['state'], deepspeed_runs['single']
    ranks = deepspeed_runs['ranks']
    assert {r['inner'] for r in ranks} == {'DualOptAdamW'}
    reviewed = set(single['anchors'])
    assert reviewed == {n for n in state if n.endswith(('weight', 'bias'))}  # the backbone
    for name in reviewed:
        flat = state[name].flatten()
        parts = [r['full4']['anchors'][name] for r in ranks]
        assert all(p.dim() == 1 for p in parts)
        assert torch.equal(torch.cat(parts)[:flat.numel()], flat), name  # padding after
        for rank, part in zip(ranks, parts):
            start, numel = rank['slices'][name]
            assert torch.equal(part[:numel], flat[start:start + numel]), name
    assert any(r['slices'][n][1] < state[n].numel() for r in ranks for n in reviewed)


@pytest.mark.slow
def test_groups_weights_and_drift_equal_one_process(deepspeed_runs):
    single = deepspeed_runs['single']
    for rank in deepspeed_runs['ranks']:
        run = rank['full4']
        assert run['groups'] == single['groups']
        for name, value in single['params'].items():
            torch.testing.assert_close(run['params'][name], value, rtol=1e-5, atol=1e-6,
                                       msg=name)
        assert run['drift'].keys() == single['drift'].keys()
        for key, value in single['drift'].items():
            assert run['drift'][key] == pytest.approx(value, rel=1e-4), key
    assert single['drift']['all'] > 0.01


@pytest.mark.slow
def test_save_and_resume_end_like_the_uninterrupted_run(deepspeed_runs):
    for rank in deepspeed_runs['ranks']:
        for name, anchor in rank['full4']['anchors'].items():  # θ_0 resumed, not re-captured
            assert torch.equal(rank['part4']['anchors'][name], anchor), name
        for name, value in rank['full4']['params'].items():
            torch.testing.assert_close(rank['part4']['params'][name], value, rtol=1e-6,
                                       atol=1e-7, msg=name)


def _strategy(**config):
    return types.SimpleNamespace(config=dict(config))


@pytest.mark.parametrize('config, mode, skip_1d, message', [
    (dict(zero_optimization=dict(stage=3)), 'finetune', None, 'stage 3'),
    (dict(zero_optimization=dict(stage=2, elastic_checkpoint=True)), 'finetune', None,
     'elastic_checkpoint=False'),
    (dict(zero_optimization=dict(stage=2)), 'scratch', None, 'skip_1d=False'),
    (dict(zero_optimization=dict(stage=1)), 'finetune', True, 'skip_1d=False'),
    (dict(optimizer=dict(type='DualOptAdamW')), 'finetune', None,
     "optim_wrapper=dict\\(optimizer=dict\\(type='DualOptAdamW'"),
])
def test_refused_at_build_time(config, mode, skip_1d, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        check_deepspeed_strategy(_strategy(**config), mode, skip_1d, 'DualOptAdamW')


def test_allows_the_dualopt_optimizer():
    strategy = _strategy(zero_optimization=dict(stage=2))
    check_deepspeed_strategy(strategy, 'finetune', None, 'DualOptAdamW')
    assert strategy.config['zero_allow_untested_optimizer'] is True
    other = _strategy(zero_optimization=dict(stage=2))
    check_deepspeed_strategy(other, 'finetune', None, None)  # torch's AdamW: DeepSpeed decides
    assert 'zero_allow_untested_optimizer' not in other.config
