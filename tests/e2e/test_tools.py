"""Argument handling of tools/train.py and tools/test.py (in-process, no training)."""
from __future__ import annotations

import importlib.util
import os
import os.path as osp
import subprocess
import sys
from types import ModuleType

import pytest
from e2e_harness import REPO_ROOT, resolve_config
from mmengine.config import Config


def _load_tool(name: str) -> ModuleType:
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'dualopt_tools_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def train_tool() -> ModuleType:
    return _load_tool('train')


@pytest.fixture(scope='module')
def test_tool() -> ModuleType:
    return _load_tool('test')


@pytest.fixture
def keep_local_rank(monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)


def test_train_resume_forms(train_tool, keep_local_rank, tmp_path):
    checkpoint = tmp_path / 'iter_4.pth'
    checkpoint.write_bytes(b'')
    assert train_tool.parse_args(['c.py']).resume is None
    assert train_tool.parse_args(['c.py', '--resume']).resume == 'auto'
    assert train_tool.parse_args(['c.py', '--resume', str(checkpoint)]).resume == str(checkpoint)


@pytest.mark.parametrize('flag', ['--local-rank', '--local_rank'])
def test_train_accepts_both_local_rank_spellings(train_tool, keep_local_rank, flag):
    args = train_tool.parse_args(['c.py', '--launcher', 'pytorch', f'{flag}=1'])
    assert args.local_rank == 1
    assert os.environ['LOCAL_RANK'] == '1'


def test_train_cfg_options(train_tool, keep_local_rank):
    args = train_tool.parse_args(['c.py', '--cfg-options', 'a.b=1', 'c=[1,2]', '--amp'])
    assert args.cfg_options == {'a.b': 1, 'c': [1, 2]}
    assert args.amp and args.launcher == 'none'


def test_amp_needs_a_gpu(train_tool):
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    from mmengine.device import get_device
    if get_device() != 'cpu':
        train_tool._enable_amp(cfg)
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        with pytest.raises(SystemExit, match='--amp needs a GPU'):
            train_tool._enable_amp(cfg)


def test_auto_scale_lr(train_tool):
    cfg = Config(dict(auto_scale_lr=dict(base_batch_size=256)))  # mmpretrain style: no enable
    train_tool._enable_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr.enable is True
    with pytest.raises(SystemExit, match='base_batch_size'):
        train_tool._enable_auto_scale_lr(Config(dict()))


def test_train_refuses_a_missing_resume_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'), str(tmp_path / 'c.py'),
         '--resume', str(tmp_path / 'missing.pth')],
        capture_output=True, text=True, check=False, cwd=str(tmp_path))
    assert result.returncode != 0
    assert 'no checkpoint file' in result.stderr


def test_test_out_must_be_a_pickle(test_tool, keep_local_rank, capsys):
    assert test_tool.parse_args(['c.py', 'x.pth', '--out', 'r.pkl']).out == 'r.pkl'
    with pytest.raises(SystemExit):
        test_tool.parse_args(['c.py', 'x.pth', '--out', 'r.json'])
    assert '.pkl' in capsys.readouterr().err


@pytest.mark.parametrize('package, config, expected', [
    ('mmdet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
     dict(hook={'draw': True, 'test_out_dir': '/vis'})),
    ('mmseg', 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
     dict(hook={'draw': True}, visualizer={'save_dir': '/vis'})),
    ('mmpretrain', 'mmpretrain::resnet/resnet18_8xb32_in1k.py',
     dict(hook={'enable': True, 'out_dir': '/vis'})),
])
def test_show_dir_per_package(test_tool, require_upstream, package, config, expected):
    """--show-dir switches on each package's own visualization hook the way it expects."""
    require_upstream(package)
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(resolve_config(config))
    init_default_scope(cfg.default_scope)
    test_tool.enable_visualization(cfg, show=False, show_dir='/vis', wait_time=1)
    hook = cfg.default_hooks.visualization
    for key, value in expected['hook'].items():
        assert hook[key] == value, (key, hook)
    for key, value in expected.get('visualizer', {}).items():
        assert cfg.visualizer[key] == value
