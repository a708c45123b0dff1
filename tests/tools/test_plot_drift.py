"""Tests of tools/analysis/plot_drift.py on generated mmengine-style logs."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'analysis' / 'plot_drift.py'
BLOCKS = ['backbone.stem', 'backbone.layer1.0', 'backbone.layer2.0', 'backbone.layer3.0']
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def load_tool():
    spec = importlib.util.spec_from_file_location('plot_drift', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drift_value(block_index: int, it: int) -> float:
    """Deterministic saturating drift, larger for deeper blocks."""
    return (0.01 + 0.02 * block_index) * (1.0 - math.exp(-it / 40.0))


def write_mmengine_log(log_dir: Path, iters: List[int], with_levels: bool = True) -> None:
    """Write what LoggerHook + WeightRollbackHook write: scalars.json lines and the levels."""
    (log_dir / 'vis_data').mkdir(parents=True)
    lines = []
    for it in iters:
        record = {'lr': 1e-4, 'data_time': 0.01, 'loss': 1.0 / it, 'time': 0.2, 'epoch': 1,
                  'iter': it, 'memory': 100, 'step': it}
        for b, block in enumerate(BLOCKS):
            record[f'drift/{block}'] = drift_value(b, it)
        record['drift/all'] = drift_value(1, it)
        lines.append(json.dumps(record))
    # a validation line (no iter, no drift) as mmengine writes after an epoch
    lines.append(json.dumps({'accuracy/top1': 50.0, 'data_time': 0.0, 'time': 0.1, 'step': 1}))
    (log_dir / 'vis_data' / 'scalars.json').write_text('\n'.join(lines) + '\n')
    if with_levels:
        levels = []
        for b, block in enumerate(BLOCKS):
            for suffix in ('weight', 'bias'):
                levels.append({'name': f'{block}.{suffix}', 'block': block, 'layer_id': b,
                               'num_layers': len(BLOCKS), 'level': 0.01 * (1 - b / 3),
                               'lr': 1e-4, 'weight_decay': 0.0, 'mode': 'finetune'})
        for name in ('neck.weight', 'head.weight', 'head.bias'):  # new layers: not reviewed
            levels.append({'name': name, 'block': name.rsplit('.', 1)[0], 'layer_id': None,
                           'num_layers': None, 'level': None, 'lr': 1e-4,
                           'weight_decay': 0.0, 'mode': 'none'})
        (log_dir / 'dualopt_levels.json').write_text(json.dumps(levels))


def write_forgetting_drift(path: Path) -> None:
    layers = ['backbone.conv1', 'backbone.conv2', 'backbone.fc']
    path.write_text(json.dumps({
        'layers': layers,
        'methods': {
            'finetune': {'label': 'full fine-tuning', 'setting': 'weight_decay=0.01',
                         'mean': [0.1, 0.3, 0.2], 'std': [0.01, 0.02, 0.01]},
            'dualopt': {'label': 'DualOpt', 'setting': 'k_max=0.01',
                        'mean': [0.02, 0.1, 0.15], 'std': [0.0, 0.01, 0.01]}}}))


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, 'MPLBACKEND': 'Agg'})


def assert_valid_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 100 and height > 100
        assert image.convert('L').getextrema()[0] < 200  # something dark was drawn


def test_read_drift_scalars_values(tmp_path: Path) -> None:
    tool = load_tool()
    write_mmengine_log(tmp_path, [10, 20, 30])
    series, x_key = tool.read_drift_scalars(str(tmp_path / 'vis_data' / 'scalars.json'))
    assert x_key == 'iter'
    assert sorted(series) == sorted(BLOCKS + ['all'])
    assert [x for x, _ in series['backbone.layer2.0']] == [10.0, 20.0, 30.0]
    assert series['backbone.layer2.0'][1][1] == pytest.approx(0.05 * (1 - math.exp(-0.5)))


def test_block_depths_follow_levels(tmp_path: Path) -> None:
    tool = load_tool()
    write_mmengine_log(tmp_path, [10])
    levels = tool.read_levels(str(tmp_path / 'dualopt_levels.json'))
    depth = tool.block_depths(BLOCKS + ['all'], levels)
    assert [depth[b] for b in BLOCKS] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert len(tool.reviewed(levels)) == 2 * len(BLOCKS)  # the three null entries left out


def test_log_dir_curves_and_levels(tmp_path: Path) -> None:
    log_dir = tmp_path / 'work' / '20250101_000000'
    write_mmengine_log(log_dir, list(range(10, 210, 10)))
    out = tmp_path / 'plots' / 'drift.png'
    proc = run_tool('--log-dir', str(log_dir), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'curves' in proc.stdout and 'levels' in proc.stdout
    assert_valid_png(out)


def test_work_dir_resolves_newest_run(tmp_path: Path) -> None:
    write_mmengine_log(tmp_path / 'work' / '20250101_000000', [10, 20])
    out = tmp_path / 'd.png'
    proc = run_tool('--log-dir', str(tmp_path / 'work'), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert_valid_png(out)


def test_curves_without_levels_file(tmp_path: Path) -> None:
    write_mmengine_log(tmp_path, [10, 20, 30], with_levels=False)
    out = tmp_path / 'd.png'
    proc = run_tool('--log-dir', str(tmp_path), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'no dualopt_levels.json' in proc.stderr
    assert_valid_png(out)


def test_forgetting_drift_and_log_in_one_figure(tmp_path: Path) -> None:
    write_mmengine_log(tmp_path / 'log', [10, 20, 30])
    write_forgetting_drift(tmp_path / 'drift.json')
    out = tmp_path / 'all.png'
    proc = run_tool('--log-dir', str(tmp_path / 'log'), '--drift', str(tmp_path / 'drift.json'),
                    '--out', str(out), '--title', 'test')
    assert proc.returncode == 0, proc.stderr
    assert 'methods' in proc.stdout
    assert_valid_png(out)


def test_relative_panel(tmp_path: Path) -> None:
    write_forgetting_drift(tmp_path / 'drift.json')
    out = tmp_path / 'rel.png'
    proc = run_tool('--drift', str(tmp_path / 'drift.json'), '--relative-to', 'finetune',
                    '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'methods, relative' in proc.stdout
    assert_valid_png(out)

    proc = run_tool('--drift', str(tmp_path / 'drift.json'), '--relative-to', 'sgd',
                    '--out', str(tmp_path / 'r2.png'))
    assert proc.returncode == 1 and "--relative-to 'sgd' is not one of" in proc.stderr


def test_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / 'vis_data').mkdir()
    (tmp_path / 'vis_data' / 'scalars.json').write_text(json.dumps({'loss': 1.0, 'iter': 1}))
    proc = run_tool('--log-dir', str(tmp_path), '--out', str(tmp_path / 'x.png'))
    assert proc.returncode == 1
    assert 'no "drift/..." scalars' in proc.stderr
    assert not (tmp_path / 'x.png').exists()

    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'layers': ['a', 'b'], 'methods': {'m': {'mean': [1.0]}}}))
    proc = run_tool('--drift', str(bad), '--out', str(tmp_path / 'y.png'))
    assert proc.returncode == 1 and "method 'm' has 1 drift values for 2 layers" in proc.stderr

    proc = run_tool('--out', str(tmp_path / 'z.png'))
    assert proc.returncode == 2 and '--log-dir and/or --drift' in proc.stderr

    proc = run_tool('--log-dir', str(tmp_path / 'missing'))
    assert proc.returncode == 1 and 'no such file or directory' in proc.stderr


def test_help() -> None:
    proc = run_tool('--help')
    assert proc.returncode == 0
    assert '--log-dir' in proc.stdout and '--drift' in proc.stdout and '--out' in proc.stdout


RUNNER_SCRIPT = '''
import sys
import torch
from torch import nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
import dualopt_mm  # noqa: F401  (registers the optimizers, constructor and hook)


class Net(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                      nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(inputs))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g), labels=torch.tensor(i % 2))


def collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


Runner(model=Net(), work_dir=sys.argv[1],
       train_dataloader=dict(dataset=Data(), batch_size=8, collate_fn=collate,
                             sampler=dict(type='InfiniteSampler', shuffle=True)),
       train_cfg=dict(by_epoch=False, max_iters=20),
       optim_wrapper=dict(optimizer=dict(type='DualOptAdamW', lr=1e-2),
                          constructor='DualOptOptimWrapperConstructor',
                          # no weights loaded here: say fine-tuning, or scratch mode is chosen
                          paramwise_cfg=dict(dualopt=dict(mode='finetune'))),
       custom_hooks=[dict(type='WeightRollbackHook', interval=5)],
       default_hooks=dict(logger=dict(type='LoggerHook', interval=5),
                          checkpoint=dict(type='CheckpointHook', interval=-1))).train()
'''


@pytest.mark.slow
def test_real_mmengine_run(tmp_path: Path) -> None:
    """What WeightRollbackHook + LoggerHook really write is what the tool reads."""
    pytest.importorskip('mmengine')
    script = tmp_path / 'train.py'
    script.write_text(RUNNER_SCRIPT)
    work_dir = tmp_path / 'work'
    proc = subprocess.run([sys.executable, str(script), str(work_dir)], capture_output=True,
                          text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tool = load_tool()
    scalars, levels = tool.find_log_files(str(work_dir))
    assert scalars is not None and levels is not None
    series, x_key = tool.read_drift_scalars(scalars)
    assert x_key == 'iter' and 'all' in series and len(series) >= 2
    assert [x for x, _ in series['all']] == [5.0, 10.0, 15.0, 20.0]
    assert tool.reviewed(tool.read_levels(levels))
    out = tmp_path / 'drift.png'
    proc = run_tool('--log-dir', str(work_dir), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'curves, levels' in proc.stdout
    assert_valid_png(out)
