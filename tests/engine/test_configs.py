"""The shipped configs: each pair differs by one line, parses, builds, and trains on generated
data (models shrunk through overrides: R18 depth, small Swin, tiny images)."""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.runner import Runner

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.compat import enable_mmengine_checkpoint_loading

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from engine_configs import (  # noqa: E402
    CONFIGS,
    HEAVY,
    PAIRS,
    config_path,
    shrunk_config,
    without_scope,
)


def _train(stem: str, variant: str, data, tmp_path, iters: int = 2) -> Runner:
    enable_mmengine_checkpoint_loading()
    runner = Runner.from_cfg(shrunk_config(stem, variant, data, str(tmp_path / variant), iters))
    runner.train()
    return runner


def test_every_config_is_listed():
    """Every shipped COCO / ADE20K / mmpretrain pair is tested here; the pairs on real bundled
    data (configs/real) are trained by tests/tools/test_real_finetune.py."""
    shipped = sorted(p for p in glob.glob(osp.join(CONFIGS, '*', '*_baseline.py'))
                     + glob.glob(osp.join(CONFIGS, '*', '*_dualopt.py'))
                     if osp.basename(osp.dirname(p)) != 'real')
    assert shipped == sorted(config_path(s, v) for s in PAIRS for v in ('baseline', 'dualopt'))


@pytest.mark.parametrize('stem', sorted(PAIRS))
def test_pair_differs_by_one_line_and_parses(stem):
    with open(config_path(stem, 'baseline')) as f:
        baseline = f.read().splitlines()
    with open(config_path(stem, 'dualopt')) as f:
        dualopt = f.read().splitlines()
    assert len(baseline) == len(dualopt)
    assert [i for i, (a, b) in enumerate(zip(baseline, dualopt)) if a != b] == [
        len(baseline) - 1]
    base_cfg = Config.fromfile(config_path(stem, 'baseline'))
    cfg = Config.fromfile(config_path(stem, 'dualopt'))
    assert base_cfg.optim_wrapper.constructor == 'DefaultOptimWrapperConstructor'
    assert cfg.optim_wrapper.constructor == 'DualOptOptimWrapperConstructor'
    assert cfg.custom_imports == dict(imports=['dualopt_mm'], allow_failed_imports=False)
    # everything else is the upstream config, optimizer kwargs included
    upstream = get_config(next(line for line in baseline
                               if line.startswith('_base_')).split("'")[1])
    assert cfg.optim_wrapper.optimizer.type == upstream.optim_wrapper.optimizer.type
    for key in ('train_cfg', 'model', 'param_scheduler', 'train_dataloader'):
        assert without_scope(cfg[key]) == without_scope(upstream[key]), key
    mode = PAIRS[stem][5]
    if mode == 'finetune':
        assert cfg.custom_hooks[0].type == 'WeightRollbackHook'
        assert base_cfg.custom_hooks == cfg.custom_hooks
        assert without_scope(cfg.optim_wrapper) == dict(
            without_scope(upstream.optim_wrapper), constructor='DualOptOptimWrapperConstructor')
    else:
        assert cfg.optim_wrapper.paramwise_cfg.dualopt.mode == 'scratch'
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.0


@pytest.mark.parametrize('stem', [
    pytest.param(s, marks=pytest.mark.slow) if s in HEAVY else s for s in sorted(PAIRS)])
def test_dualopt_config_trains(stem, request, tmp_path):
    data = request.getfixturevalue(PAIRS[stem][2])
    runner = _train(stem, 'dualopt', data, tmp_path)
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == PAIRS[stem][6]
    assert runner.iter == 2
    groups = optimizer.param_groups
    reviewed = [g for g in groups if g['mode'] != 'none']
    assert reviewed and all(g['layer_id'] is not None for g in reviewed)
    state = [optimizer.state[g['params'][0]] for g in groups]
    assert all(torch.isfinite(p).all() for g in groups for p in g['params'])
    if PAIRS[stem][5] == 'finetune':
        # only the backbone is reviewed (no checkpoint offline: the build-time rule holds)
        assert {g['param_name'].split('.')[0] for g in reviewed} == {'backbone'}
        assert all('anchor' in s for g, s in zip(groups, state) if g['mode'] == 'finetune')
        run_dir = runner.log_dir
        with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
            records = [json.loads(line) for line in f]
        assert records[-1]['drift/all'] > 0
        with open(osp.join(run_dir, 'dualopt_levels.json')) as f:
            rows = json.load(f)
        assert rows[0]['layer_id'] == 0 and rows[0]['level'] == 0.01
    else:
        assert {g['mode'] for g in groups} == {'scratch'}
        assert all('anchor' not in s for s in state)
        assert {g['weight_decay'] for g in groups} == {0.0}


@pytest.mark.parametrize('stem', [pytest.param('faster-rcnn_r50_fpn_1x_coco',
                                               marks=pytest.mark.slow),
                                  'upernet_r50_4xb4-160k_ade20k-512x512',
                                  'resnet50_8xb8_cub'])
def test_baseline_config_trains_stock_optimizer_and_logs_drift(stem, request, tmp_path):
    data = request.getfixturevalue(PAIRS[stem][2])
    runner = _train(stem, 'baseline', data, tmp_path)
    expected = PAIRS[stem][6].replace('DualOpt', '')
    assert type(runner.optim_wrapper.optimizer) is getattr(torch.optim, expected)
    assert runner.message_hub.get_scalar('train/drift/all').current() > 0


@pytest.mark.slow
def test_upstream_train_tool_registers_through_custom_imports(small_classification, tmp_path):
    """MMPretrain's own tools/train.py (what ``mim train mmpretrain CFG`` runs) knows nothing
    of dualopt_mm: the config's ``custom_imports`` alone registers constructor and hook."""
    import mmpretrain
    from e2e_harness import dump_config, run_tool

    work_dir = str(tmp_path / 'work')
    cfg = shrunk_config('resnet50_8xb8_cub', 'dualopt', small_classification, work_dir)
    path = dump_config(cfg, str(tmp_path / 'cub_dualopt.py'))
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'train.py')
    result = run_tool(['python', tool, path, '--work-dir', work_dir], cwd=str(tmp_path))
    output = result.stdout + result.stderr
    assert 'DualOpt param groups (DualOptSGD, replacing SGD' in output
    levels = glob.glob(osp.join(work_dir, '2*', 'dualopt_levels.json'))
    assert len(levels) == 1
    with open(levels[0]) as f:
        rows = json.load(f)
    assert rows[0]['name'] == 'backbone.conv1.weight' and rows[0]['level'] == 0.01
