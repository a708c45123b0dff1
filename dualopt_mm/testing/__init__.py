"""Test utilities: deterministic synthetic datasets (numpy + Pillow only).

``dualopt_mm.testing.synthetic_data`` needs neither torch nor mmengine, so the generators can
be used to prepare data on any machine (``tools/data/generate_datasets.py`` is their CLI).
"""
from .synthetic_data import (
                             SHAPES,
                             GeneratedDataset,
                             class_names,
                             make_ade20k_dataset,
                             make_classification_dataset,
                             make_coco_dataset,
)

__all__ = [
    'SHAPES',
    'GeneratedDataset',
    'class_names',
    'make_coco_dataset',
    'make_ade20k_dataset',
    'make_classification_dataset',
]
