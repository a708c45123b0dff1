"""dualopt_mm.compat on real mmengine objects (mmengine only; no downstream package needed)."""
from __future__ import annotations

import os
import pickle
import socket

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset
from torch_versions import checkpoint_globals, safe_global_names

from dualopt_mm.compat import (
    enable_mmengine_checkpoint_loading,
    is_cpu_ddp_patched,
    load_mmengine_checkpoint,
    patch_mmengine_for_cpu_ddp,
)
from dualopt_mm.compat.checkpoint import decoder_globals, is_installed


class _Regressor(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.norm = nn.SyncBatchNorm(1)

    def forward(self, inputs, targets=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        outputs = self.linear(inputs).squeeze(-1)
        if mode == 'loss':
            targets = torch.stack(targets) if isinstance(targets, list) else targets
            return {'loss': ((outputs - targets) ** 2).mean()}
        return outputs


class _Points(Dataset):

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        inputs = torch.randn(3, generator=generator)
        return {'inputs': inputs, 'targets': inputs.sum()}


def _runner(work_dir: str, max_epochs: int, resume: bool = False) -> Runner:
    return Runner(
        model=_Regressor(),
        work_dir=work_dir,
        train_dataloader=dict(dataset=_Points(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        resume=resume,
        experiment_name=f'compat_{os.path.basename(work_dir)}_{max_epochs}_{resume}',
    )


@pytest.fixture(scope='module')
def mmengine_checkpoint(tmp_path_factory) -> str:
    work_dir = str(tmp_path_factory.mktemp('compat_run'))
    _runner(work_dir, max_epochs=1).train()
    return os.path.join(work_dir, 'epoch_1.pth')


def test_plain_torch_load_still_refuses(mmengine_checkpoint):
    """torch.load(weights_only=True) is untouched by the package: it refuses mmengine's
    HistoryBuffer as it does without dualopt_mm (the reason for the decoders)."""
    # torch >= 2.6 names the first refused global (HistoryBuffer); older torch numpy's
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer|numpy'):
        torch.load(mmengine_checkpoint, weights_only=True)


def test_checkpoint_globals_are_the_decoded_ones(mmengine_checkpoint):
    found = checkpoint_globals(mmengine_checkpoint)
    assert found <= {name for _, name in decoder_globals()}
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in found


def test_checkpoint_loads_weights_only(mmengine_checkpoint):
    before = safe_global_names()
    checkpoint = load_mmengine_checkpoint(mmengine_checkpoint)
    assert safe_global_names() == before
    buffer = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert len(buffer.data[0]) == 4
    assert buffer.mean() == pytest.approx(float(buffer.data[0].mean()))
    assert checkpoint['meta']['iter'] == 4
    # the decoded buffer is a working HistoryBuffer with real numpy arrays
    buffer.update(1.0)
    assert len(buffer.data[0]) == 5


def test_mmengine_loader_is_installed_by_import():
    assert enable_mmengine_checkpoint_loading() is True  # idempotent
    assert is_installed()


def test_runner_resumes_under_weights_only(mmengine_checkpoint, tmp_path):
    """mmengine's own resume path (torch.load without weights_only) works after the fix."""
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') is None
    work_dir = os.path.dirname(mmengine_checkpoint)
    runner = _runner(work_dir, max_epochs=2, resume=True)
    runner.train()
    assert runner.iter == 8
    assert os.path.isfile(os.path.join(work_dir, 'epoch_2.pth'))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU DDP patch is off with CUDA')
def test_cpu_ddp_patch_single_process(monkeypatch):
    """init_dist('pytorch', backend='nccl') and DDP with device_ids work on CPU after the patch."""
    import torch.distributed as torch_dist
    from mmengine.dist import init_dist
    from mmengine.model import MMDistributedDataParallel

    assert patch_mmengine_for_cpu_ddp() is True
    assert patch_mmengine_for_cpu_ddp() is True  # idempotent
    assert is_cpu_ddp_patched()
    torch.cuda.set_device(0)  # a no-op now

    for key, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1',
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    init_dist('pytorch', backend='nccl')
    try:
        assert torch_dist.get_backend() == 'gloo'
        model = MMDistributedDataParallel(module=_Regressor(), device_ids=[0],
                                          broadcast_buffers=False)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    finally:
        torch_dist.destroy_process_group()
