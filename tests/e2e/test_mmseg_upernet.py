"""UperNet R18 (mmseg stock ADE20K config) on generated ADE20K data, through our tools.

train (2 iterations, IoUMetric) -> resume to 4 iterations -> tools/test.py
(with --out and --show-dir).
"""
from __future__ import annotations

import os

import pytest
from e2e_harness import finite_metrics, train_resume_test

pytestmark = pytest.mark.slow

METRICS = ['aAcc', 'mIoU', 'mAcc']


@pytest.mark.parametrize('variant', ['dualopt', 'stock'])
def test_upernet_train_resume_test(variant, require_upstream, require_variant, ade20k_data,
                                   e2e_config, checkpoint_inspector, record_iteration_times):
    require_upstream('mmseg')
    require_variant(variant)
    cfg, config_path = e2e_config('upernet', ade20k_data, 2, optimizer=variant)
    # The stock config keeps SyncBN: mmengine reverts it to BN in non-distributed runs.
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'

    show_dir = os.path.join(cfg.work_dir, 'show')
    result = train_resume_test(config_path, cfg.work_dir, by_epoch=False, length=2,
                               resumed_length=4,
                               test_args=['--show-dir', show_dir, '--cfg-options',
                                          'default_hooks.visualization.interval=1'])

    assert len(result.val_records) == 2, 'one validation per run'
    for record in result.val_records:
        finite_metrics(record, METRICS)
    finite_metrics(result.test_metrics, METRICS)
    checkpoint_inspector(result.final_checkpoint, variant, expected_iter=4,
                         label=f'{__name__.split(".")[-1]} ({variant})')
    # --show-dir: SegVisualizationHook(draw=True) saves through the visualizer's save_dir.
    drawn = [f for _, _, files in os.walk(show_dir) for f in files if f.endswith('.png')]
    assert len(drawn) == ade20k_data.num_images['val']
    record_iteration_times(f'upernet_r18 crop128 b2 ({variant})', result.iteration_times)
