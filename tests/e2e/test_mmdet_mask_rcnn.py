"""Mask R-CNN (mmdet stock config, R18 backbone) on generated COCO data, through our tools.

train (1 epoch = 2 iterations, CocoMetric bbox+segm) -> resume to epoch 2 -> tools/test.py
(with --out and --show-dir).
"""
from __future__ import annotations

import os

import pytest
from e2e_harness import finite_metrics, train_resume_test

pytestmark = pytest.mark.slow

METRICS = ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50']


@pytest.mark.parametrize('variant', ['dualopt', 'stock'])
def test_mask_rcnn_train_resume_test(variant, require_upstream, require_variant, coco_data,
                                     e2e_config, checkpoint_inspector, record_iteration_times):
    require_upstream('mmdet')
    require_variant(variant)
    cfg, config_path = e2e_config('mask_rcnn', coco_data, 1, optimizer=variant)
    assert cfg.optim_wrapper.optimizer.type == ('DualOptSGD' if variant == 'dualopt' else 'SGD')

    show_dir = os.path.join(cfg.work_dir, 'show')
    result = train_resume_test(config_path, cfg.work_dir, by_epoch=True, length=1,
                               resumed_length=2, test_args=['--show-dir', show_dir])

    assert len(result.val_records) == 2, 'one validation per run'
    for record in result.val_records:
        finite_metrics(record, METRICS)
    finite_metrics(result.test_metrics, METRICS)
    checkpoint_inspector(result.final_checkpoint, variant, expected_iter=4,
                         label=f'{__name__.split(".")[-1]} ({variant})')
    # --show-dir: DetVisualizationHook(draw=True, test_out_dir=...) drew every test image.
    drawn = [f for _, _, files in os.walk(show_dir) for f in files if f.endswith('.jpg')]
    assert len(drawn) == coco_data.num_images['val']
    record_iteration_times(f'mask_rcnn_r18_fpn 256x192 b2 ({variant})', result.iteration_times)
