"""Registration of the DualOpt optimizers in mmengine's root registries.

Registering in the *root* ``OPTIMIZERS`` makes ``type='DualOptAdamW'`` resolve under every
downstream scope (``mmdet``, ``mmseg``, ``mmpretrain``), whose registries are its children.
"""
from mmengine.registry import OPTIMIZERS

from .optim import DualOptAdam, DualOptAdamW, DualOptSGD


def register_optimizers() -> None:
    """Register the three optimizers (idempotent: re-importing replaces the same classes)."""
    for optimizer_class in (DualOptSGD, DualOptAdam, DualOptAdamW):
        OPTIMIZERS.register_module(module=optimizer_class, force=True)
