"""DualOpt through mmengine's ``FlexibleRunner`` + ``FSDPStrategy`` on 2 CPU gloo processes.

The one-line constructor switch, ``WeightRollbackHook`` and ``load_from`` a pretrained toy
checkpoint (backbone and neck, no head), ``use_orig_params=True``, full state dicts:

- θ_0 is the ``load_from`` weights shard by shard (the two ranks' flat shards of each tensor
  put together are the checkpoint tensor), and the reviewed set is refined from the
  checkpoint's unsharded names and shapes (the neck joins, nothing is switched off);
- the weights after 4 steps equal one process reading the same batches (gradient
  accumulation over the two ranks' micro-batches) to float32 tolerance, and so do the drift
  logs (reduced over the ranks, not one rank's shard);
- a run saved at step 2 and resumed to 4 ends like the uninterrupted run (θ_0 and moments
  resumed, not re-captured).
"""
import os

import pytest
import torch

pytestmark = pytest.mark.slow

STRATEGY = dict(type='FSDPStrategy', model_wrapper=dict(use_orig_params=True),
                state_dict_cfg='full')


def _pretrained(tmp_path) -> tuple:
    from engine_runner import toy_model
    generator = torch.Generator().manual_seed(5)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.1 + v
                 if v.is_floating_point() else v)
             for k, v in toy_model().state_dict().items() if not k.startswith('head.')}
    path = str(tmp_path / 'pretrained.pth')
    torch.save(dict(state_dict=state, meta=dict()), path)
    return path, state


def _summary(runner) -> dict:
    from flexible_runner import hook_of
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from dualopt_mm.engine.strategies import clean_name, is_fsdp
    model = runner.model
    if is_fsdp(model):
        with FSDP.summon_full_params(model, writeback=False):
            params = {clean_name(n): p.detach().clone() for n, p in model.module.named_parameters()}
    else:
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
    scalars = runner.message_hub.log_scalars
    drift = {k[len('train/drift/'):]: v.current() for k, v in scalars.items()
             if k.startswith('train/drift/')}
    groups = [(g['param_name'], g['mode'], g['layer_id'], g['num_layers'])
              for g in runner.optim_wrapper.optimizer.param_groups]
    return dict(params=params, drift=drift, groups=groups,
                anchors=hook_of(runner, 'AnchorProbeHook').anchors)


def _fsdp_worker(rank: int, work_dir: str, checkpoint: str) -> None:
    import torch.distributed as dist
    from flexible_runner import make_flexible_runner
    out = {}
    for name, iters, load_from, resume in (
            ('full', 4, checkpoint, False), ('part', 2, checkpoint, False),
            ('part', 4, os.path.join(work_dir, 'part', 'iter_2.pth'), True)):
        runner = make_flexible_runner(os.path.join(work_dir, name), strategy=dict(STRATEGY),
                                      max_iters=iters, load_from=load_from, resume=resume)
        runner.train()
        out[f'{name}{iters}'] = _summary(runner)
        dist.barrier()
    torch.save(out, os.path.join(work_dir, f'rank{rank}.pt'))


@pytest.fixture(scope='module')
def fsdp_runs(tmp_path_factory):
    from flexible_runner import INTERLEAVED, InterleavedToyData, make_flexible_runner, spawn_ranks
    tmp = tmp_path_factory.mktemp('fsdp_runner')
    checkpoint, state = _pretrained(tmp)
    work_dir = str(tmp / 'work')
    os.makedirs(work_dir)
    spawn_ranks(_fsdp_worker, (work_dir, checkpoint))
    ranks = [torch.load(os.path.join(work_dir, f'rank{r}.pt'), weights_only=False)
             for r in range(2)]
    # one process, the same batches: rank 0's then rank 1's micro-batch in every step
    single = make_flexible_runner(str(tmp / 'single'), max_iters=8, checkpoint_interval=100,
                                  load_from=checkpoint, accumulative_counts=2,
                                  dataset=InterleavedToyData(INTERLEAVED), launcher='none')
    single.train()
    return dict(ranks=ranks, single=_summary(single), state=state, work_dir=work_dir)


def test_theta0_is_the_load_from_weights_shard_by_shard(fsdp_runs):
    state = fsdp_runs['state']
    single = fsdp_runs['single']
    for run in ('full4', 'part2'):
        shards = [rank[run]['anchors'] for rank in fsdp_runs['ranks']]
        # the reviewed set: the checkpoint's tensors (backbone and neck), as in one process
        assert set(shards[0]) == set(shards[1]) == set(single['anchors'])
        assert set(single['anchors']) == {n for n in state if not n.endswith(
            ('running_mean', 'running_var', 'num_batches_tracked'))}
        for name, value in state.items():
            if name not in single['anchors']:
                continue
            whole = torch.cat([shards[0][name].flatten(), shards[1][name].flatten()])
            assert torch.equal(whole, value.flatten()), name
    # the two ranks really hold different parts
    assert any(s.numel() != state[n].numel() for n, s in fsdp_runs['ranks'][0]['full4'][
        'anchors'].items())


def test_groups_and_weights_equal_one_process(fsdp_runs):
    single = fsdp_runs['single']
    for rank in fsdp_runs['ranks']:
        assert rank['full4']['groups'] == single['groups']
        assert [g for g in single['groups'] if g[0].startswith('neck.')][0][1] == 'finetune'
        for name, value in single['params'].items():
            torch.testing.assert_close(rank['full4']['params'][name], value, rtol=1e-5,
                                       atol=1e-6, msg=name)


def test_drift_is_reduced_over_the_ranks(fsdp_runs):
    single = fsdp_runs['single']['drift']
    assert single['all'] > 0.01
    for rank in fsdp_runs['ranks']:
        drift = rank['full4']['drift']
        assert drift.keys() == single.keys()
        for key, value in single.items():
            assert drift[key] == pytest.approx(value, rel=1e-4), key


def test_save_and_resume_end_like_the_uninterrupted_run(fsdp_runs):
    for rank in fsdp_runs['ranks']:
        # θ_0 resumed from the checkpoint (the load_from shards), not the weights at step 2;
        # a tensor none of whose elements is on this rank has no state there after resume
        held = {n: a for n, a in rank['full4']['anchors'].items() if a.numel()}
        assert rank['part4']['anchors'].keys() == held.keys()
        for name, anchor in held.items():
            assert torch.equal(rank['part4']['anchors'][name], anchor), name
        for name, value in rank['full4']['params'].items():
            torch.testing.assert_close(rank['part4']['params'][name], value, rtol=1e-6,
                                       atol=1e-7, msg=name)
        assert rank['part4']['drift']['all'] == pytest.approx(rank['full4']['drift']['all'],
                                                              rel=1e-5)


def test_levels_table_logged_once(fsdp_runs):
    import glob
    logs = glob.glob(os.path.join(fsdp_runs['work_dir'], 'full', '*', '*.log'))
    text = ''.join(open(path, encoding='utf-8').read() for path in logs)
    assert text.count('DualOpt param groups') == 1
    assert 'refined from the checkpoint keys (2 changed)' in text  # neck.weight, neck.bias
    assert '-> none' not in text
