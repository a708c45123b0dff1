"""UperNet R18 (mmseg's stock ADE20K config) through ``FlexibleRunner`` + ``DeepSpeedStrategy``
(ZeRO-2) on 2 CPU gloo processes (``tools/dist_train.sh``), with the one-line DualOpt switch,
``WeightRollbackHook`` and the backbone's weights from ``init_cfg=Pretrained``.

Compared with one process reading the same batches (gradient accumulation over the two ranks'
micro-batches; the same deterministic pipeline as ``test_fsdp_mmseg.py``): the weights after 3
steps and the drift logs; θ_0 in the two ranks' DeepSpeed optimizer files, put together, is the
pretrained backbone; only the backbone is reviewed. Needs deepspeed (``dualopt_mm[deepspeed]``).
"""
from __future__ import annotations

import glob
import os
import socket
import sys

import pytest
import torch
from e2e_harness import REPO_ROOT, dump_config, read_scalars, run_tool
from test_fsdp_mmseg import STEPS, _config, _pretrained, assert_same_drift

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def deepspeed_vs_single(tmp_path_factory, require_upstream, ade20k_data):
    from dualopt_mm.compat import load_mmengine_checkpoint

    require_upstream('mmseg')
    pytest.importorskip('deepspeed', reason="DeepSpeed is not installed (pip install "
                        "'dualopt_mm[deepspeed]')")
    tmp = tmp_path_factory.mktemp('deepspeed_mmseg')
    checkpoint = str(tmp / 'pretrained.pth')
    runs = {}
    for name, deepspeed in (('deepspeed', True), ('single', False)):
        work_dir = str(tmp / name)
        cfg = _config(ade20k_data, work_dir, checkpoint, fsdp=deepspeed)
        if not os.path.isfile(checkpoint):
            _pretrained(cfg, checkpoint)
        cfg.load_from = None  # DeepSpeedStrategy's load_from reads DeepSpeed folders only
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint,
                                           prefix='backbone.')
        if deepspeed:
            # DeepSpeed clips gradients to norm 1.0 unless told (the stock config: no clipping)
            cfg.strategy = dict(type='DeepSpeedStrategy', zero_optimization=dict(stage=2),
                                gradient_clipping=0.0)
        config = dump_config(cfg, str(tmp / f'upernet_{name}.py'))
        if deepspeed:
            with socket.socket() as sock:
                sock.bind(('127.0.0.1', 0))
                port = sock.getsockname()[1]
            result = run_tool(['bash', os.path.join(REPO_ROOT, 'tools', 'dist_train.sh'),
                               config, '2'], timeout=600,
                              env={'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable,
                                   'PORT': str(port)},
                              log_file=str(tmp / 'deepspeed_stdout.log'))
            folder = os.path.join(work_dir, f'iter_{STEPS}.pth')
            model = torch.load(os.path.join(folder, 'mp_rank_00_model_states.pt'),
                               map_location='cpu', weights_only=False)['module']
            optimizer = [torch.load(path, map_location='cpu', weights_only=False)
                         ['optimizer_state_dict']['base_optimizer_state'] for path in
                         sorted(glob.glob(os.path.join(folder, 'zero_pp_rank_*optim*')))]
        else:
            result = run_tool(['python', os.path.join(REPO_ROOT, 'tools', 'train.py'), config],
                              timeout=600, log_file=str(tmp / 'single_stdout.log'))
            model = load_mmengine_checkpoint(os.path.join(work_dir, f'iter_{2 * STEPS}.pth'),
                                             map_location='cpu')['state_dict']
            optimizer = None
        runs[name] = dict(output=result.stdout + result.stderr,
                          scalars=read_scalars(work_dir), model=model, optimizer=optimizer)
    runs['pretrained'] = torch.load(checkpoint, weights_only=True)['state_dict']
    return runs


def test_weights_equal_one_process(deepspeed_vs_single):
    deepspeed = deepspeed_vs_single['deepspeed']['model']
    single = deepspeed_vs_single['single']['model']
    assert deepspeed.keys() == single.keys()
    for name, value in single.items():
        if value.is_floating_point() and 'running_' not in name:  # BN statistics: per rank
            torch.testing.assert_close(deepspeed[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_theta0_on_the_partitions_is_the_pretrained_backbone(deepspeed_vs_single):
    ranks = deepspeed_vs_single['deepspeed']['optimizer']
    pretrained = deepspeed_vs_single['pretrained']
    assert len(ranks) == 2
    groups = ranks[0]['param_groups']
    reviewed = {g['param_name'] for g in groups if g['mode'] == 'finetune'}
    assert reviewed == {n for n in pretrained if 'running_' not in n
                        and 'num_batches_tracked' not in n}
    for index, group in enumerate(groups):
        anchors = [rank['state'][index].get('anchor') for rank in ranks]
        if group['param_name'] not in reviewed:
            assert anchors == [None, None], group['param_name']
            continue
        flat = pretrained[group['param_name']].flatten()
        assert torch.equal(torch.cat(anchors)[:flat.numel()], flat), group['param_name']


def test_drift_logs_are_the_whole_models(deepspeed_vs_single):
    assert_same_drift(deepspeed_vs_single['deepspeed']['scalars'],
                      deepspeed_vs_single['single']['scalars'])
    output = deepspeed_vs_single['deepspeed']['output']
    assert output.count('DualOpt param groups (DualOptSGD, replacing SGD') == 1
    assert 'zero_allow_untested_optimizer=True for DualOptSGD' in output
