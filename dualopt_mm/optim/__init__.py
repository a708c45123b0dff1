"""DualOpt / OLOR optimizers: torch's SGD / Adam / AdamW plus the layer-wise review step.

Plain PyTorch use needs nothing else (no mmengine)::

    from dualopt_mm.optim import DualOptAdamW
    optimizer = DualOptAdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

See :mod:`dualopt_mm.optim.review` for the update rule and the hyper-parameters.
"""
from .adam import DualOptAdam, DualOptAdamW
from .levels import layer_level
from .review import DualOptOptimizer, apply_review
from .sgd import DualOptSGD

__all__ = [
    'DualOptAdam',
    'DualOptAdamW',
    'DualOptOptimizer',
    'DualOptSGD',
    'apply_review',
    'layer_level',
]
