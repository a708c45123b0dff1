"""Registration of the DualOpt optimizers in mmengine's root registries.

Registering in the *root* ``OPTIMIZERS`` makes ``type='DualOptAdamW'`` resolve under every
downstream scope (``mmdet``, ``mmseg``, ``mmpretrain``), whose registries are its children.
"""
from typing import Any

from mmengine.registry import OPTIMIZERS

from .optim import DualOptAdam, DualOptAdamW, DualOptSGD


def register_optimizers() -> None:
    """Register the three optimizers (idempotent: re-importing replaces the same classes)."""
    for optimizer_class in (DualOptSGD, DualOptAdam, DualOptAdamW):
        OPTIMIZERS.register_module(module=optimizer_class, force=True)


def optimizer_class(optimizer_type: Any) -> type:
    """The class of an optimizer ``type`` as configs name it (a class is returned as is), looked
    up in mmengine's root ``OPTIMIZERS``; ValueError naming it when it is not registered."""
    if not isinstance(optimizer_type, str):
        return optimizer_type
    with OPTIMIZERS.switch_scope_and_registry(None) as registry:
        cls = registry.get(optimizer_type)
    if cls is None:
        raise ValueError(f'optimizer type {optimizer_type!r} is not registered in OPTIMIZERS '
                         '(import dualopt_mm, or name a torch.optim class)')
    return cls
