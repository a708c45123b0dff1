"""ResNet-18 classifier (mmpretrain stock ImageNet config) on generated folders, through our tools.

train (1 epoch = 6 iterations, Accuracy top-1/top-5) -> resume to epoch 2 -> tools/test.py.
Variants: DualOptSGD (the one-line change; the test step also runs ``--show-dir``),
DualOptAdamW (a replaced optimizer; train and resume) and, with ``--e2e-optimizers=stock|all``,
the stock SGD baseline.
"""
from __future__ import annotations

import os
import pickle

import pytest
from e2e_harness import finite_metrics, train_resume_test

pytestmark = pytest.mark.slow

METRICS = ['accuracy/top1', 'accuracy/top5']
ADAMW = dict(type='DualOptAdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)


@pytest.mark.parametrize('variant', ['stock', 'dualopt', 'dualopt_adamw'])
def test_resnet_train_resume_test(variant, require_upstream, require_variant,
                                  classification_data, e2e_config, checkpoint_inspector,
                                  record_iteration_times):
    require_upstream('mmpretrain')
    require_variant('stock' if variant == 'stock' else 'dualopt')
    optimizer = ADAMW if variant == 'dualopt_adamw' else variant
    # the AdamW run also keeps an EMA of the weights (its own checkpoint key, resumed too)
    extra = dict(custom_hooks=[dict(type='EMAHook', momentum=0.01)]) \
        if variant == 'dualopt_adamw' else {}
    cfg, config_path = e2e_config('resnet', classification_data, 1, optimizer=optimizer,
                                  **extra)
    show_dir = os.path.join(cfg.work_dir, 'show')
    # mmpretrain's VisualizationHook is switched by `enable` and writes to `out_dir`.
    show_args = ['--show-dir', show_dir, '--cfg-options', 'default_hooks.visualization.interval=1']

    result = train_resume_test(config_path, cfg.work_dir, by_epoch=True, length=1,
                               resumed_length=2, run_test=variant != 'dualopt_adamw',
                               test_args=show_args if variant == 'dualopt' else ())

    assert len(result.val_records) == 2, 'one validation per run'
    for record in result.val_records:
        finite_metrics(record, METRICS)
    checkpoint = checkpoint_inspector(
        result.final_checkpoint, 'stock' if variant == 'stock' else 'dualopt', expected_iter=12,
        label=f'mmpretrain resnet18 ({variant}{", EMA" if extra else ""})')
    if extra:
        assert 'ema_state_dict' in checkpoint
    record_iteration_times(f'resnet18 56x56 b4 ({variant})', result.iteration_times)
    if variant == 'dualopt_adamw':
        return
    metrics = finite_metrics(result.test_metrics, METRICS)
    assert 0 <= metrics['accuracy/top1'] <= metrics['accuracy/top5'] <= 100
    with open(result.predictions, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == classification_data.num_images['val']
    if variant == 'dualopt':
        drawn = [f for _, _, files in os.walk(show_dir) for f in files if f.endswith('.png')]
        assert len(drawn) == classification_data.num_images['val']
