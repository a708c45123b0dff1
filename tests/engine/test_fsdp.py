"""FSDP (``use_orig_params=True``) with the constructor and DualOptAdamW on 2 CPU gloo
processes: the same groups, modes and layer ids as without FSDP, θ_0 sharded with the
parameters, the trained weights equal to one unsharded process; unsupported setups refused.

torch's ``FullyShardedDataParallel`` called by hand (CPU, gloo); mmengine's ``FlexibleRunner`` +
``FSDPStrategy`` end to end: ``tests/engine/test_fsdp_runner.py``, ``tests/e2e/test_fsdp_mmseg.py``.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_toys import ToyDetector
from mmengine.optim import build_optim_wrapper

pytestmark = pytest.mark.slow

STEPS = 3
ADAMW = dict(type='AdamW', lr=1e-2, weight_decay=0.05)
FINETUNE = dict(dualopt=dict(mode='finetune', pretrained='backbone', k_max=0.2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _build(model, paramwise_cfg=FINETUNE):
    return build_optim_wrapper(model, dict(constructor='DualOptOptimWrapperConstructor',
                                           optimizer=dict(ADAMW),
                                           paramwise_cfg=paramwise_cfg)).optimizer


def _train(model, optimizer) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        inputs = torch.randn(4, 3, 8, 8, generator=generator)
        labels = torch.randint(0, 2, (4, ), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _groups(optimizer):
    return [(g['param_name'], g['mode'], g['layer_id'], g['num_layers'], g['block'])
            for g in optimizer.param_groups]


def _worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    import dualopt_mm.engine  # noqa: F401

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.manual_seed(0)
    model = FSDP(ToyDetector(), device_id=torch.device('cpu'), use_orig_params=True)
    optimizer = _build(model)
    groups = _groups(optimizer)
    _train(model, optimizer)
    anchor_numel = sum(optimizer.state[p]['anchor'].numel() for g in optimizer.param_groups
                       for p in g['params'] if 'anchor' in optimizer.state[p])
    with FSDP.summon_full_params(model):
        params = {n.replace('_fsdp_wrapped_module.', ''): p.detach().clone()
                  for n, p in model.named_parameters()}
    errors = {}
    for name, build in (
            ('flat_params', lambda: _build(FSDP(ToyDetector(), device_id=torch.device('cpu'),
                                                use_orig_params=False))),
            ('scratch', lambda: _build(FSDP(ToyDetector(), device_id=torch.device('cpu'),
                                            use_orig_params=True),
                                       dict(dualopt=dict(mode='scratch'))))):
        try:
            build()
        except NotImplementedError as error:
            errors[name] = str(error)
    torch.save(dict(groups=groups, params=params, anchor_numel=anchor_numel, errors=errors),
               os.path.join(out, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_fsdp_use_orig_params_matches_unsharded_and_refuses_the_rest(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = _build(model)
    reference_groups = _groups(optimizer)
    _train(model, optimizer)
    backbone_numel = sum(p.numel() for n, p in model.named_parameters()
                         if n.startswith('backbone.'))
    for rank in ranks:
        assert rank['groups'] == reference_groups  # names, modes, layer ids, blocks
        for name, value in model.named_parameters():
            torch.testing.assert_close(rank['params'][name], value.detach(), rtol=1e-5,
                                       atol=1e-6, msg=name)
        assert 'use_orig_params=True' in rank['errors']['flat_params']
        assert 'skip_1d' in rank['errors']['scratch']
    # θ_0 is sharded with the parameters: the two ranks' anchors add up to the backbone once
    assert 0 < ranks[0]['anchor_numel'] < backbone_numel
    assert ranks[0]['anchor_numel'] + ranks[1]['anchor_numel'] == backbone_numel
