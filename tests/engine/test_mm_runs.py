"""Real OpenMMLab runs of the shipped DualOpt configs (shrunk, generated data, CPU):
θ_0 is the checkpoint's weights (``load_from`` and ``init_cfg=Pretrained``), and a run stopped
at iteration 2 and resumed ends at iteration 4 exactly like an uninterrupted one."""

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import dualopt_mm.engine  # noqa: F401
from dualopt_mm.compat import enable_mmengine_checkpoint_loading

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from engine_configs import shrunk_config  # noqa: E402


def deterministic_pipeline(cfg: ConfigDict) -> None:
    """Drop the random data augmentations (their RNG draws are not replayed on resume)."""
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[:] = [t for t in pipeline if t['type'] != 'PhotoMetricDistortion']
    for transform in pipeline:
        if transform['type'] == 'RandomFlip':
            transform.prob = 0.0
        if transform['type'] == 'RandomResize':
            transform.ratio_range = (1.0, 1.0)


def pretrained_backbone_checkpoint(cfg: ConfigDict, scope: str, path: str,
                                   seed: int = 123) -> dict:
    """Write a "pretrained" checkpoint: the backbone of another random init of the model."""
    from mmengine.registry import MODELS
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if k.startswith('backbone.')}
    torch.save(dict(state_dict=state, meta=dict()), path)
    return state


def run(cfg: ConfigDict, work_dir: str, max_iters: int, **kwargs) -> Runner:
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=2, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False, window_size=1)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='IterationSeedHook')]
    cfg.visualizer.name = f'visualizer_{work_dir}'
    cfg.update(kwargs)
    enable_mmengine_checkpoint_loading()
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def optimizer_tensors(runner: Runner) -> dict:
    optimizer = runner.optim_wrapper.optimizer
    return {(g['param_name'], key): value for g in optimizer.param_groups
            for key, value in optimizer.state[g['params'][0]].items()}


RESUME_CASES = {
    'mmdet': ('faster-rcnn_r50_fpn_1x_coco', 'small_coco'),
    'mmseg': ('upernet_r50_4xb4-160k_ade20k-512x512', 'small_ade20k'),
}


@pytest.mark.parametrize('scope', [pytest.param('mmdet', marks=pytest.mark.slow), 'mmseg'])
def test_theta0_from_load_from_and_exact_resume(scope, request, tmp_path):
    stem, data_fixture = RESUME_CASES[scope]
    data = request.getfixturevalue(data_fixture)
    cfg = shrunk_config(stem, 'dualopt', data, str(tmp_path / 'unused'))
    deterministic_pipeline(cfg)
    checkpoint = str(tmp_path / 'pretrained.pth')
    pretrained = pretrained_backbone_checkpoint(cfg, scope, checkpoint)

    full = run(cfg, str(tmp_path / 'full'), 4, load_from=checkpoint)
    run(cfg, str(tmp_path / 'part'), 2, load_from=checkpoint)
    resumed = run(cfg, str(tmp_path / 'part'), 4, load_from=str(tmp_path / 'part/iter_2.pth'),
                  resume=True)
    assert full.iter == resumed.iter == 4

    # θ_0 of every reviewed tensor is the checkpoint's value, the heads are not reviewed
    optimizer = full.optim_wrapper.optimizer
    reviewed = [g for g in optimizer.param_groups if g['mode'] == 'finetune']
    assert {g['param_name'].split('.')[0] for g in reviewed} == {'backbone'}
    assert len(reviewed) == sum(1 for n, p in full.model.named_parameters()
                                if n.startswith('backbone.') and p.requires_grad)
    for group in reviewed:
        anchor = optimizer.state[group['params'][0]]['anchor']
        assert torch.equal(anchor, pretrained[group['param_name']]), group['param_name']

    expected = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, expected[name]), name
    expected_state, got_state = optimizer_tensors(full), optimizer_tensors(resumed)
    assert expected_state.keys() == got_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(got_state[key])), key
    for ours, theirs in zip(optimizer.param_groups, resumed.optim_wrapper.optimizer.param_groups):
        assert {k: v for k, v in ours.items() if k != 'params'} == {
            k: theirs[k] for k in ours if k != 'params'}


def test_theta0_from_init_cfg_pretrained_mmpretrain(small_classification, tmp_path):
    """mmpretrain's CUB recipe: init_cfg=Pretrained(prefix='backbone') of a whole-model file."""
    cfg = shrunk_config('resnet50_8xb8_cub', 'dualopt', small_classification,
                        str(tmp_path / 'work'))
    checkpoint = str(tmp_path / 'pretrained.pth')
    pretrained = pretrained_backbone_checkpoint(cfg, 'mmpretrain', checkpoint)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint,
                                       prefix='backbone')
    enable_mmengine_checkpoint_loading()
    runner = Runner.from_cfg(cfg)
    runner.train()
    optimizer = runner.optim_wrapper.optimizer
    groups = {g['param_name']: g for g in optimizer.param_groups}
    assert groups['head.fc.weight']['mode'] == 'none'
    for name, group in groups.items():
        if name.startswith('backbone.'):
            assert group['mode'] == 'finetune', name
            anchor = optimizer.state[group['params'][0]]['anchor']
            assert torch.equal(anchor, pretrained[name]), name
    assert groups['backbone.conv1.weight']['layer_id'] == 0
    assert groups['backbone.layer4.1.conv2.weight']['layer_id'] == 8  # stem + 8 basic blocks
