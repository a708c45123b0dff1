"""UperNet R18 (mmseg's stock ADE20K config) through ``FlexibleRunner`` + ``FSDPStrategy`` on
2 CPU gloo processes (``tools/dist_train.sh``), with the one-line DualOpt switch,
``WeightRollbackHook`` and ``load_from`` a pretrained backbone checkpoint.

Compared with one process (``tools/train.py``) that reads the same batches (rank 0's, then
rank 1's micro-batch of each step, by gradient accumulation over 2): the weights after 3
steps, θ_0 (gathered from the shards into the FSDP checkpoint's optimizer state) = the
``load_from`` weights, the drift logs (added over the shards), the refined modes (nothing
switched off), and the level table logged once. The pipeline is made deterministic (fixed
resize, no flip / photometric / random crop, no dropout) and BN replaces SyncBN so that both
runs compute the same thing; the model, loss and data code paths are mmseg's.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from e2e_harness import REPO_ROOT, build_e2e_config, dump_config, read_scalars, run_tool

pytestmark = pytest.mark.slow

STEPS = 3
INTERLEAVED = [0, 2, 1, 3]  # rank r of 2 reads samples r, r + 2 (DefaultSampler, no shuffle)


def _config(ade20k_data, work_dir: str, checkpoint: str, fsdp: bool):
    side = min(ade20k_data.image_size)
    cfg = build_e2e_config('upernet', ade20k_data, work_dir, STEPS * (1 if fsdp else 2))
    cfg.custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
    cfg.optim_wrapper.constructor = 'DualOptOptimWrapperConstructor'  # the one-line switch
    cfg.custom_hooks = [dict(type='WeightRollbackHook', interval=1)]
    cfg.load_from = checkpoint
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0,
                                end=100)]
    bn = dict(type='BN', requires_grad=True)
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        cfg.model[part].norm_cfg = bn
    cfg.model.decode_head.dropout_ratio = 0.0
    cfg.model.auxiliary_head.dropout_ratio = 0.0
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='Resize', scale=(side, side), keep_ratio=False), dict(type='PackSegInputs')]
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    cfg.train_cfg.val_interval = 1000
    cfg.default_hooks.checkpoint.interval = 1000  # save_last only
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.runner_type = 'FlexibleRunner'  # both: the same build order, so the same random init
    if fsdp:
        cfg.strategy = dict(type='FSDPStrategy', model_wrapper=dict(use_orig_params=True),
                            state_dict_cfg='full')
    else:
        cfg.optim_wrapper.accumulative_counts = 2
        cfg.train_dataloader.dataset.indices = INTERLEAVED
    return cfg


def _pretrained(cfg, path: str) -> None:
    """A 'pretrained' backbone checkpoint: the backbone of a model built with another seed."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(123)
    model = MODELS.build(cfg.model)
    model.init_weights()
    state = {k: v for k, v in model.state_dict().items() if k.startswith('backbone.')}
    torch.save(dict(state_dict=state, meta=dict()), path)


@pytest.fixture(scope='module')
def fsdp_vs_single(tmp_path_factory, require_upstream, ade20k_data):
    from dualopt_mm.compat import load_mmengine_checkpoint

    require_upstream('mmseg')
    tmp = tmp_path_factory.mktemp('fsdp_mmseg')
    checkpoint = str(tmp / 'pretrained.pth')
    runs = {}
    for name, fsdp in (('fsdp', True), ('single', False)):
        work_dir = str(tmp / name)
        cfg = _config(ade20k_data, work_dir, checkpoint, fsdp)
        if not os.path.isfile(checkpoint):
            _pretrained(cfg, checkpoint)
        config = dump_config(cfg, str(tmp / f'upernet_{name}.py'))
        if fsdp:
            with __import__('socket').socket() as sock:
                sock.bind(('127.0.0.1', 0))
                port = sock.getsockname()[1]
            result = run_tool(['bash', os.path.join(REPO_ROOT, 'tools', 'dist_train.sh'),
                               config, '2'], timeout=600,
                              env={'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable,
                                   'PORT': str(port)},
                              log_file=str(tmp / 'fsdp_stdout.log'))
        else:
            result = run_tool(['python', os.path.join(REPO_ROOT, 'tools', 'train.py'), config],
                              timeout=600, log_file=str(tmp / 'single_stdout.log'))
        iters = STEPS * (1 if fsdp else 2)
        runs[name] = dict(
            output=result.stdout + result.stderr, scalars=read_scalars(work_dir),
            checkpoint=load_mmengine_checkpoint(os.path.join(work_dir, f'iter_{iters}.pth'),
                                                map_location='cpu'))
    runs['pretrained'] = torch.load(checkpoint, weights_only=True)['state_dict']
    return runs


def test_weights_equal_one_process(fsdp_vs_single):
    fsdp = fsdp_vs_single['fsdp']['checkpoint']['state_dict']
    single = fsdp_vs_single['single']['checkpoint']['state_dict']
    pretrained = fsdp_vs_single['pretrained']
    assert fsdp.keys() == single.keys()
    moved = 0
    for name, value in single.items():
        if not value.is_floating_point() or 'running_' in name:
            continue  # BN statistics are per process
        torch.testing.assert_close(fsdp[name], value, rtol=1e-4, atol=1e-5, msg=name)
        if name in pretrained:
            moved += not torch.equal(value, pretrained[name])
    assert moved > 0  # the backbone trained away from the checkpoint


def test_theta0_is_the_load_from_weights(fsdp_vs_single):
    from dualopt_mm.engine.strategies.fsdp import ANCHOR_PLACEHOLDERS
    optimizer = fsdp_vs_single['fsdp']['checkpoint']['optimizer']
    state = optimizer['state']
    pretrained = fsdp_vs_single['pretrained']
    # the heads' zero placeholders (FSDP gathers a key only if every tensor has it) are
    # marked in their groups and dropped again on load
    placeholders = {g['params'][i] for g in optimizer['param_groups']
                    for i in g.get(ANCHOR_PLACEHOLDERS, ())}
    assert placeholders and all(not n.startswith('backbone.') for n in placeholders)
    anchored = {name for name, entry in state.items()
                if 'anchor' in entry and name not in placeholders}
    weights = {n for n, v in pretrained.items() if 'running_' not in n
               and 'num_batches_tracked' not in n}
    assert anchored == weights  # every backbone tensor, and no placeholder of the heads
    for name in weights:
        assert torch.equal(state[name]['anchor'], pretrained[name]), name


def assert_same_drift(sharded_records, single_records) -> None:
    """The last logged drift scalars of a sharded run equal the one-process run's (every
    stage, more than five of them): the logs are the whole model's, not one rank's."""
    def drift(records):
        last = [r for r in records if 'drift/all' in r][-1]
        return {k: v for k, v in last.items() if k.startswith('drift/')}

    sharded, single = drift(sharded_records), drift(single_records)
    assert sharded.keys() == single.keys() and len(sharded) > 5
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-3, abs=1e-7), key


def test_drift_logs_are_the_whole_models(fsdp_vs_single):
    assert_same_drift(fsdp_vs_single['fsdp']['scalars'], fsdp_vs_single['single']['scalars'])


def test_modes_refined_and_table_logged_once(fsdp_vs_single):
    output = fsdp_vs_single['fsdp']['output']
    assert output.count('DualOpt param groups (DualOptSGD, replacing SGD') == 1
    assert '-> none' not in output  # no pretrained tensor switched off by shard shapes
    groups = fsdp_vs_single['fsdp']['checkpoint']['optimizer']['param_groups']
    modes = {g['param_name']: g['mode'] for g in groups}
    assert {n for n, m in modes.items() if m == 'finetune'} == {
        n for n in modes if n.startswith('backbone.')}
