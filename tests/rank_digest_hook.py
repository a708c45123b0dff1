"""Hooks for tests: per-rank digests of the training state (DDP consistency checks).

``import rank_digest_hook`` (``tests/`` on the path: the tool subprocesses get it from
``e2e_harness.tool_env``) registers :class:`RankStateDigestHook` in mmengine's root ``HOOKS``
(so every downstream scope finds it). A config uses it with::

    custom_imports = dict(imports=['dualopt_mm', 'rank_digest_hook'])
    custom_hooks = [dict(type='RankStateDigestHook')]
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any, Dict, Optional

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

__all__ = ['RankStateDigestHook', 'tensor_digest', 'load_rank_digests']


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (equal digests <=> equal tensors)."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f'{tensor.dtype}{tuple(tensor.shape)}'.encode())
    if tensor.numel():
        # A byte view works for every dtype, bfloat16 included (numpy has none).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tensor_digest(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    return repr(value)


@HOOKS.register_module(force=True)
class RankStateDigestHook(Hook):
    """After training, every rank writes digests of its parameters, buffers and optimizer state.

    Files: ``<work_dir>/<out_dir>/rank<r>.json`` with keys ``rank``, ``iter``, ``params``,
    ``buffers`` (name -> digest) and ``optimizer`` (the optimizer ``state_dict`` with every
    tensor replaced by its digest). Under DDP all ranks must agree on all of them.

    Args:
        out_dir: Directory under the work_dir.
    """

    priority = 'VERY_LOW'

    def __init__(self, out_dir: str = 'rank_digests') -> None:
        self.out_dir = out_dir

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        optimizer = runner.optim_wrapper.optimizer
        record: Dict[str, Any] = {
            'rank': get_rank(),
            'iter': runner.iter,
            'params': {n: tensor_digest(p) for n, p in model.named_parameters()},
            'buffers': {n: tensor_digest(b) for n, b in model.named_buffers()},
            'optimizer': _describe(optimizer.state_dict()),
        }
        directory = osp.join(runner.work_dir, self.out_dir)
        os.makedirs(directory, exist_ok=True)
        with open(osp.join(directory, f'rank{get_rank()}.json'), 'w', encoding='utf-8') as f:
            json.dump(record, f)


def load_rank_digests(work_dir: str, out_dir: str = 'rank_digests',
                      world_size: Optional[int] = None) -> Dict[int, Dict[str, Any]]:
    """Read the files :class:`RankStateDigestHook` wrote: ``{rank: record}``."""
    directory = osp.join(work_dir, out_dir)
    records = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith('rank') and name.endswith('.json'):
            with open(osp.join(directory, name), encoding='utf-8') as f:
                record = json.load(f)
            records[int(record['rank'])] = record
    if world_size is not None and sorted(records) != list(range(world_size)):
        raise AssertionError(f'expected digests of ranks 0..{world_size - 1} in {directory}, '
                             f'found {sorted(records)}')
    return records
