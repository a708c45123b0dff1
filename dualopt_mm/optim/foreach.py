"""The foreach paths' bucketing: tensors grouped by device and dtype and cut in chunks.

torch's ``_foreach_*`` ops take lists of tensors of one device and dtype. The DualOpt foreach
paths work through each bucket in chunks of at most ``CHUNK_NUMEL_*`` elements: on CPU a
chunk's intermediates (Adam's denominator, ...) stay in cache, which makes the foreach path as
fast as the loop; on accelerators a large chunk keeps the kernel launches few and bounds the
transient memory (one chunk instead of the whole model). Only shapes are read: no host sync.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Optional

import torch
from torch import Tensor

__all__ = ['FOREACH_DEVICES', 'bucket_chunks', 'chunk_numel', 'upcast_slices']

#: Devices on which torch's own optimizers default to their foreach implementation.
FOREACH_DEVICES = ('cuda', 'xpu', 'mtia')

CHUNK_NUMEL_CPU = 1 << 16
CHUNK_NUMEL_ACCELERATOR = 1 << 25


def bucket_chunks(tensors: Sequence[Tensor], extra_keys: Optional[Sequence[Hashable]] = None
                  ) -> list[tuple[tuple, list[int]]]:
    """Indices of ``tensors`` bucketed by (device, dtype[, extra key]), first-seen order, and
    cut into chunks of at most ``CHUNK_NUMEL_*`` elements (a larger tensor is a chunk alone).

    Returns ``(key, indices)`` pairs; no host synchronisation (only shapes are read).
    """
    buckets: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        key = (t.device, t.dtype) if extra_keys is None else (t.device, t.dtype, extra_keys[i])
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = [i]
        else:
            bucket.append(i)
    chunks = []
    for key, indices in buckets.items():
        limit = chunk_numel(key[0])
        chunk: list[int] = []
        numel = 0
        for i in indices:
            n = tensors[i].numel()
            if chunk and numel + n > limit:
                chunks.append((key, chunk))
                chunk, numel = [], 0
            chunk.append(i)
            numel += n
        if chunk:
            chunks.append((key, chunk))
    return chunks


def chunk_numel(device: torch.device) -> int:
    return CHUNK_NUMEL_CPU if device.type == 'cpu' else CHUNK_NUMEL_ACCELERATOR


def upcast_slices(param: Tensor, anchor: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(param, anchor) cut into flat slices of at most one chunk, so the upcast copy of a
    low-precision anchor stays small (no large temporary allocation per step)."""
    limit = chunk_numel(param.device)
    if param.numel() <= limit or not (param.is_contiguous() and anchor.is_contiguous()):
        return [(param, anchor)]
    flat_param, flat_anchor = param.view(-1), anchor.view(-1)
    return [(flat_param[s:s + limit], flat_anchor[s:s + limit])
            for s in range(0, flat_param.numel(), limit)]
