"""FSDP support of the constructor: parameter names without FSDP's wrapper components, and
the combinations that are refused (see docs/integration.md, FSDP)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

__all__ = ['WRAPPER_NAME_PARTS', 'check_fsdp', 'clean_name', 'is_fsdp']


#: Name components FSDP (and activation checkpointing) insert into parameter names.
WRAPPER_NAME_PARTS = ('_fsdp_wrapped_module.', '_checkpoint_wrapped_module.')


def clean_name(name: str) -> str:
    """``name`` without the components FSDP wrappers insert (the model's own name)."""
    for part in WRAPPER_NAME_PARTS:
        name = name.replace(part, '')
    return name


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` contains a ``FullyShardedDataParallel`` unit."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def check_fsdp(model: nn.Module, mode: str, skip_1d: Optional[bool]) -> None:
    """Refuse the FSDP setups DualOpt cannot run (docs/integration.md, FAQ "FSDP").

    Supported: ``use_orig_params=True`` (the optimizer sees each tensor's local shard under its
    own name), with ``skip_1d`` False (the default in finetune mode): shards are flat, so a
    tensor's original rank, which ``skip_1d`` reads, is not visible to the optimizer.
    """
    names = [n for n, _ in model.named_parameters()]
    if any('flat_param' in n for n in names):
        raise NotImplementedError(
            'DualOpt under FSDP needs use_orig_params=True (model_wrapper=dict(type='
            "'MMFullyShardedDataParallel', use_orig_params=True)): with flat parameters the "
            "optimizer cannot tell the model's tensors apart (names, pretrained split, block "
            'index). Or shard only the optimizer state with ZeRO-1 (docs/integration.md, FAQ '
            '"Large backbones")')
    skips = mode == 'scratch' if skip_1d is None else skip_1d
    if skips and mode != 'none':
        raise NotImplementedError(
            f"DualOpt under FSDP: mode={mode!r} with skip_1d={skip_1d!r} exempts 1-d tensors "
            'by their rank, but FSDP hands the optimizer flat 1-d shards of every tensor. Set '
            'paramwise_cfg=dict(dualopt=dict(skip_1d=False)) (and custom_keys '
            "dict(mode='none') for the norms and biases to exempt), or use DDP / ZeRO-1")
