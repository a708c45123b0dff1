"""Drift ‖θ − θ_0‖ / ‖θ_0‖ per block and over all fine-tuned tensors, for the whole model
whatever part of it a rank holds (``WeightRollbackHook``'s logs)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Optional

import torch

__all__ = ['block_sums', 'drift_from_sums']


@torch.no_grad()
def block_sums(rows: Iterable[tuple[str, torch.Tensor, Optional[torch.Tensor]]],
               reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per block of ``(block, θ, θ_0 or None)`` rows: ``[‖θ − θ_0‖², ‖θ_0‖², tensors with a
    θ_0]`` in float64, this rank's part added over the ranks by ``reduce_sum`` (a collective
    where the strategy shards: every rank calls it with the same blocks, in the same order).
    The squared norms are read back with one device sync."""
    blocks: dict[str, int] = {}
    params, anchors, index = [], [], []
    for block, param, anchor in rows:
        row = blocks.setdefault(block, len(blocks))
        if anchor is not None:
            params.append(param.detach())
            anchors.append(anchor)
            index.append(row)
    if not blocks:
        return {}
    sums = torch.zeros(len(blocks), 3, dtype=torch.float64)
    if params:
        squares = torch.stack([torch.stack([
            torch.linalg.vector_norm(p - a.to(p.dtype), dtype=torch.float64)**2,
            torch.linalg.vector_norm(a, dtype=torch.float64)**2])
            for p, a in zip(params, anchors)]).cpu()
        rows_index = torch.tensor(index)
        sums[:, :2].index_add_(0, rows_index, squares)
        sums[:, 2].index_add_(0, rows_index, torch.ones(len(index), dtype=torch.float64))
    sums = reduce_sum(sums)
    return {block: sums[row] for block, row in blocks.items()}


def drift_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{block: drift}`` and ``'all'`` from :func:`block_sums` (of one or more optimizers,
    added); blocks where no rank holds a θ_0 are left out."""
    sums = {block: value for block, value in sums.items() if value[2] > 0}
    if not sums:
        return {}
    sums['all'] = sum(sums.values())
    return {key: math.sqrt(diff / ref) if ref > 0 else 0.0
            for key, (diff, ref, _) in ((k, v.tolist()) for k, v in sums.items())}
