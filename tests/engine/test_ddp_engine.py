"""CPU DDP (2 gloo processes) with the constructor and WeightRollbackHook on the toy detector:
both ranks end with identical parameters, optimizer state and θ_0 (= the load_from weights).

Complements tests/e2e/test_ddp.py (stock mmpretrain config with the optimizer swapped, run
through torchrun): here the hook unwraps MMDistributedDataParallel, captures θ_0 on every rank
and, for a torch optimizer, applies the review step after each synchronised step.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from engine_runner import hook_of, make_toy_runner
from test_weight_rollback_hook import pretrained_state, write_checkpoint

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
SETUPS = {
    'dualopt': {},
    'torch_sgd_hook_review': dict(paramwise_cfg=dict(dualopt=dict(swap_optimizer=False)),
                                  hooks=[dict(type='WeightRollbackHook', review=True)]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, work_dir: str, checkpoint: str, setup: str) -> None:
    from mmengine.model import is_model_wrapper

    from dualopt_mm.compat import patch_mmengine_for_cpu_ddp

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    patch_mmengine_for_cpu_ddp()
    runner = make_toy_runner(work_dir, load_from=checkpoint, max_iters=3, launcher='pytorch',
                             **SETUPS[setup])
    runner.train()
    assert is_model_wrapper(runner.model)
    model = runner.model.module
    optimizer = runner.optim_wrapper.optimizer
    if setup == 'dualopt':
        anchors = {g['param_name']: optimizer.state[g['params'][0]]['anchor']
                   for g in optimizer.param_groups if g['mode'] == 'finetune'}
    else:
        anchors = dict(hook_of(runner).anchors)
    torch.save(dict(params={n: p.detach() for n, p in model.named_parameters()},
                    anchors=anchors, optimizer=optimizer.state_dict()),
               os.path.join(work_dir, f'rank{rank}.pt'))


@pytest.mark.parametrize('setup', sorted(SETUPS))
def test_ranks_agree_on_parameters_and_theta0(tmp_path, setup):
    loaded = pretrained_state(drop=('head', ))
    checkpoint = write_checkpoint(tmp_path / 'pretrained.pth', loaded)
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    mp.spawn(_worker, args=(_free_port(), work_dir, checkpoint, setup), nprocs=WORLD_SIZE,
             join=True)
    ranks = [torch.load(os.path.join(work_dir, f'rank{r}.pt'), weights_only=False)
             for r in range(WORLD_SIZE)]
    for name, param in ranks[0]['params'].items():
        assert torch.equal(param, ranks[1]['params'][name]), name
    assert ranks[0]['anchors'].keys() == ranks[1]['anchors'].keys()
    assert len(ranks[0]['anchors']) == 17  # backbone (15) + neck (2): what load_from filled
    for name, anchor in ranks[0]['anchors'].items():
        assert torch.equal(anchor, ranks[1]['anchors'][name]), name
        assert torch.equal(anchor, loaded[name]), name
    states = [r['optimizer']['state'] for r in ranks]
    for index, state in states[0].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(states[1][index][key]))
    # the ranks trained: the weights left θ_0
    assert not torch.equal(ranks[0]['params']['backbone.conv1.weight'],
                           loaded['backbone.conv1.weight'])
