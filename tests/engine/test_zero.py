"""ZeRO-1 with DualOpt on 2 CPU gloo processes: mmengine's ``type='ZeroRedundancyOptimizer',
optimizer_type='AdamW'`` under the constructor becomes ``DualOptZeroRedundancyOptimizer``
around ``DualOptAdamW``; θ_0 is sharded with the moments, levels and modes are those of the
unsharded optimizer, the result equals one unsharded process bit for bit, and a consolidated
state_dict resumes bit-exactly."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_toys import ToyDetector
from mmengine.optim import build_optim_wrapper

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
STEPS, SAVE_AT = 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _optimizer(model, zero: bool):
    optimizer = dict(type='ZeroRedundancyOptimizer', optimizer_type='AdamW') if zero else \
        dict(type='AdamW')
    return build_optim_wrapper(model, dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(optimizer, lr=1e-2, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.0,
                           dualopt=dict(mode='finetune', pretrained='backbone', k_max=0.2)))
    ).optimizer


def _step(model, optimizer, t: int) -> None:
    """A step with gradients that depend only on (t, tensor position): the same on all ranks,
    as DDP's averaged gradients are."""
    for i, p in enumerate(model.parameters()):
        p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype).view_as(p) * 0.1 + t + i)
    optimizer.step()


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    import dualopt_mm.engine  # noqa: F401
    from dualopt_mm.engine.zero import DualOptZeroRedundancyOptimizer
    from dualopt_mm.optim import DualOptAdamW

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE)
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = _optimizer(model, zero=True)
    assert type(optimizer) is DualOptZeroRedundancyOptimizer
    assert type(optimizer.optim) is DualOptAdamW
    saved = os.path.join(out, 'checkpoint.pt')
    for t in range(STEPS):
        if t == SAVE_AT:
            optimizer.consolidate_state_dict()  # collective: gathered on rank 0
            state = optimizer.state_dict()
            if rank == 0:
                torch.save(dict(model=model.state_dict(), optimizer=state), saved)
        _step(model, optimizer, t)
    local_anchors = sorted(g['param_name'] for g in optimizer.optim.param_groups
                           for p in g['params'] if 'anchor' in optimizer.optim.state[p])
    levels = [(g['param_name'], layer_id, num_layers, level) for g, (_, layer_id, num_layers,
              level) in zip(optimizer.param_groups, optimizer.review_levels())]
    uninterrupted = _params(model)
    dist.barrier()

    # resume: a fresh model and optimizer, the consolidated checkpoint loaded on every rank
    torch.manual_seed(1)
    model = ToyDetector()
    checkpoint = torch.load(saved, weights_only=True)
    anchors_in_checkpoint = sum('anchor' in s for s in checkpoint['optimizer']['state'].values())
    saved_groups = [(g['param_name'], g['mode'], g['layer_id'])
                    for g in checkpoint['optimizer']['param_groups']]
    model.load_state_dict(checkpoint['model'])
    optimizer = _optimizer(model, zero=True)
    optimizer.load_state_dict(checkpoint['optimizer'])
    for t in range(SAVE_AT, STEPS):
        _step(model, optimizer, t)
    torch.save(dict(uninterrupted=uninterrupted, resumed=_params(model),
                    local_anchors=local_anchors, levels=levels,
                    modes=[(g['param_name'], g['mode'], g['layer_id'], g['num_layers'])
                           for g in optimizer.param_groups],
                    saved_groups=saved_groups, anchors_in_checkpoint=anchors_in_checkpoint),
               os.path.join(out, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_zero1_shards_theta0_matches_unsharded_and_resumes_exactly(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    # the reference: one process, the unsharded DualOptAdamW with the same groups
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = _optimizer(model, zero=False)
    for t in range(STEPS):
        _step(model, optimizer, t)
    reference = _params(model)
    reference_levels = [(g['param_name'], layer_id, num_layers, level) for g, (
        _, layer_id, num_layers, level) in zip(optimizer.param_groups,
                                                optimizer.review_levels())]
    for rank in ranks:
        for name, value in reference.items():
            assert torch.equal(rank['uninterrupted'][name], value), name
            assert torch.equal(rank['resumed'][name], value), name
        assert rank['levels'] == reference_levels  # levels do not depend on the partition
        assert rank['modes'] == [(g['param_name'], g['mode'], g['layer_id'], g['num_layers'])
                                 for g in optimizer.param_groups]
        assert [m[:3] for m in rank['modes']] == rank['saved_groups']
    # θ_0 sharded: each rank holds only its own tensors' anchors, together all 15 backbone ones
    shards = [set(r['local_anchors']) for r in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {g['param_name'] for g in optimizer.param_groups
                                     if g['mode'] == 'finetune'}
    assert len(shards[0] | shards[1]) == 15
    assert ranks[0]['anchors_in_checkpoint'] == 15  # the consolidated checkpoint has them all
    # and the review really acted: the reference differs from plain AdamW
    torch.manual_seed(0)
    plain_model = ToyDetector()
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, weight_decay=0.05)
    for t in range(STEPS):
        _step(plain_model, plain, t)
    assert not torch.equal(plain_model.backbone.conv1.weight, reference['backbone.conv1.weight'])


def test_zero_refuses_reviewed_groups_without_layer_ids():
    from dualopt_mm.engine.zero import DualOptZeroRedundancyOptimizer
    model = ToyDetector()
    with pytest.raises(ValueError, match='no layer_id / num_layers.*OptimWrapperConstructor'):
        DualOptZeroRedundancyOptimizer([dict(params=list(model.parameters()))],
                                       optimizer_type='DualOptAdamW', lr=1e-3)


ZERO_SGD = dict(type='ZeroRedundancyOptimizer', optimizer_type='SGD', lr=0.1, momentum=0.9,
                weight_decay=1e-4)


def _runner_worker(rank: int, port: int, work_dir: str, checkpoint: str) -> None:
    from engine_runner import make_toy_runner, model_state

    from dualopt_mm.compat import patch_mmengine_for_cpu_ddp
    from dualopt_mm.engine.zero import DualOptZeroRedundancyOptimizer

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE='2')
    torch.set_num_threads(1)
    patch_mmengine_for_cpu_ddp()
    runs = {}
    for name, iters, load_from, resume in (
            ('full', 4, checkpoint, False), ('part', 2, checkpoint, False),
            ('part', 4, os.path.join(work_dir, 'part', 'iter_2.pth'), True)):
        runner = make_toy_runner(os.path.join(work_dir, name), optimizer=ZERO_SGD,
                                 load_from=load_from, resume=resume, max_iters=iters,
                                 launcher='pytorch',
                                 hooks=[dict(type='WeightRollbackHook', interval=1),
                                        dict(type='ZeroConsolidateHook')])
        runner.train()
        dist.barrier()
        runs[f'{name}{iters}'] = runner
    optimizer = runs['part4'].optim_wrapper.optimizer
    assert type(optimizer) is DualOptZeroRedundancyOptimizer
    local = {g['param_name'] for g in optimizer.optim.param_groups for p in g['params']
             if 'anchor' in optimizer.optim.state[p]}
    torch.save(dict(full=model_state(runs['full4']), resumed=model_state(runs['part4']),
                    local_anchors=local,
                    anchors={g['param_name']: optimizer.optim.state[p]['anchor']
                             for g in optimizer.optim.param_groups for p in g['params']
                             if 'anchor' in optimizer.optim.state[p]}),
               os.path.join(work_dir, f'rank{rank}.pt'))


def test_zero1_in_a_ddp_runner_resumes_exactly(tmp_path):
    """The mmengine Runner path: DDP (2 gloo ranks), the constructor turning mmengine's
    ZeroRedundancyOptimizer into DualOpt's, WeightRollbackHook, CheckpointHook saving the
    consolidated state at iteration 2, resume to 4 == an uninterrupted run to 4."""
    from test_weight_rollback_hook import pretrained_state, write_checkpoint
    loaded = pretrained_state(drop=('head', ))
    checkpoint = write_checkpoint(tmp_path / 'pretrained.pth', loaded)
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    mp.spawn(_runner_worker, args=(_free_port(), work_dir, checkpoint), nprocs=2, join=True)
    ranks = [torch.load(os.path.join(work_dir, f'rank{r}.pt'), weights_only=False)
             for r in range(2)]
    for rank in ranks:
        for name, value in rank['full'].items():
            assert torch.equal(rank['resumed'][name], value), name
            assert torch.equal(ranks[0]['full'][name], value), name
        for name, anchor in rank['anchors'].items():  # θ_0 = the load_from weights
            assert torch.equal(anchor, loaded[name]), name
    assert not ranks[0]['local_anchors'] & ranks[1]['local_anchors']
    assert len(ranks[0]['local_anchors'] | ranks[1]['local_anchors']) == 17  # backbone + neck


def test_mmengine_zero_with_a_dualopt_type_names_the_supported_spelling():
    """mmengine's ZeroRedundancyOptimizer looks optimizer_type up in torch.optim: a DualOpt
    name gets a clear error (before any process group is needed), torch's names are left."""
    import torch.nn as nn

    import dualopt_mm  # noqa: F401
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="torch.optim only, which has no 'DualOptAdamW'.*"
                       "type='DualOptZeroRedundancyOptimizer'"):
        build_optim_wrapper(model, dict(optimizer=dict(
            type='ZeroRedundancyOptimizer', optimizer_type='DualOptAdamW', lr=1e-3)))
    with pytest.raises(Exception) as unknown:  # not registered anywhere: mmengine's own error
        build_optim_wrapper(model, dict(optimizer=dict(
            type='ZeroRedundancyOptimizer', optimizer_type='NoSuchOptimizer', lr=1e-3)))
    assert 'DualOptZeroRedundancyOptimizer' not in str(unknown.value)
