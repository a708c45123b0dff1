"""DDP smoke on CPU: ``tools/dist_train.sh CFG 2`` (torchrun ... --launcher pytorch).

Two gloo processes train mmpretrain's stock ResNet-18 for one epoch of 2 iterations (6 images
per rank and iteration) and validate. ``RankStateDigestHook`` makes every rank write digests of
its parameters, buffers and optimizer state (θ_0 ``anchor`` included) at the end; DDP must
leave them identical on all ranks. The ``ddp_run`` fixture (module scope) runs once; add tests
that read ``ddp_run.work_dir`` / ``ddp_run.checkpoint`` / ``ddp_run.digests`` to check more.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Dict

import pytest
import torch
from e2e_harness import REPO_ROOT, iteration_times, read_scalars, run_tool

pytestmark = pytest.mark.slow

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@dataclass
class DDPRun:
    variant: str
    work_dir: str
    checkpoint: str
    output: str
    digests: Dict[int, Dict[str, Any]]


@pytest.fixture(scope='module', params=['dualopt', 'stock'])
def ddp_run(request, tmp_path_factory, require_upstream, require_variant, classification_data,
            record_iteration_times) -> DDPRun:
    from e2e_harness import build_e2e_config, dump_config
    from rank_digest_hook import load_rank_digests

    variant = request.param
    require_upstream('mmpretrain')
    require_variant(variant)
    tmp = tmp_path_factory.mktemp(f'ddp_{variant}')
    work_dir = str(tmp / 'work_dir')
    cfg = build_e2e_config('resnet', classification_data, work_dir, 1, optimizer=variant)
    cfg.train_dataloader.batch_size = 6  # 24 images / (2 ranks x 6) = 2 iterations
    imports = ['rank_digest_hook'] + (['dualopt_mm'] if variant == 'dualopt' else [])
    cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='RankStateDigestHook')]
    config_path = dump_config(cfg, str(tmp / 'resnet_ddp.py'))

    # Through our launcher script (torchrun), with this interpreter and a free port.
    result = run_tool(
        ['bash', os.path.join(REPO_ROOT, 'tools', 'dist_train.sh'), config_path,
         str(WORLD_SIZE)],
        timeout=600, env={'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable,
                          'PORT': str(_free_port())},
        log_file=str(tmp / 'torchrun_stdout.log'))
    output = result.stdout + result.stderr
    record_iteration_times(f'resnet18 56x56 b6x2 DDP gloo ({variant})',
                           iteration_times(read_scalars(work_dir)))
    return DDPRun(variant, work_dir, os.path.join(work_dir, 'epoch_1.pth'), output,
                  load_rank_digests(work_dir, world_size=WORLD_SIZE))


def test_ddp_run_finishes(ddp_run: DDPRun, checkpoint_inspector):
    assert os.path.isfile(ddp_run.checkpoint)
    checkpoint = checkpoint_inspector(ddp_run.checkpoint, ddp_run.variant, expected_iter=2,
                                      label=f'DDP 2 ranks ({ddp_run.variant})')
    assert checkpoint['meta']['epoch'] == 1
    if not torch.cuda.is_available():
        assert 'using the "gloo" backend' in ddp_run.output
    records = read_scalars(ddp_run.work_dir)
    assert len(iteration_times(records)) == 2
    assert any('accuracy/top1' in r for r in records)


def test_ranks_hold_identical_state(ddp_run: DDPRun):
    rank0, rank1 = ddp_run.digests[0], ddp_run.digests[1]
    assert rank0['iter'] == rank1['iter'] == 2
    assert rank0['params'] and rank0['params'] == rank1['params']
    assert rank0['optimizer']['state'], 'the optimizer has per-parameter state'
    assert rank0['optimizer'] == rank1['optimizer']
    # Running BN statistics are per process (each rank saw different images).
    assert rank0['buffers'].keys() == rank1['buffers'].keys()


def test_checkpoint_matches_rank0(ddp_run: DDPRun):
    """The checkpoint (saved by rank 0) holds the weights every rank ended with."""
    from rank_digest_hook import tensor_digest

    from dualopt_mm.compat import load_mmengine_checkpoint

    state = load_mmengine_checkpoint(ddp_run.checkpoint, map_location='cpu')['state_dict']
    params = ddp_run.digests[0]['params']
    assert {name: tensor_digest(state[name]) for name in params} == params

