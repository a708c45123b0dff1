r"""``DualOptZeroRedundancyOptimizer``: ZeRO-1 (optimizer-state sharding) for DualOpt.

mmengine's ``ZeroRedundancyOptimizer`` finds the local optimizer with
``getattr(torch.optim, optimizer_type)``, so ``optimizer_type='DualOptAdamW'`` fails. This class
is torch's :class:`~torch.distributed.optim.ZeroRedundancyOptimizer` with the local optimizer
looked up in mmengine's ``OPTIMIZERS`` (DualOpt's, torch's and any registered one)::

    optim_wrapper = dict(
        constructor='DualOptOptimWrapperConstructor',
        optimizer=dict(type='DualOptZeroRedundancyOptimizer', optimizer_type='DualOptAdamW',
                       lr=1e-4, weight_decay=0.05))

(``DualOptOptimWrapperConstructor`` also turns mmengine's ``type='ZeroRedundancyOptimizer'``
with ``optimizer_type='SGD' | 'Adam' | 'AdamW'`` into this.)

What is sharded: each rank's local DualOpt optimizer owns the param groups' tensors torch's
partition assigns to it, and keeps their state: the moments *and* θ_0 (the per-parameter
``anchor``), so θ_0 costs ``1 / world_size`` of a weight copy per rank. The review step runs
inside the local step; the updated shards are then broadcast as usual.

What is kept: every group (one tensor each, from the constructor) carries its ``mode``,
``layer_id`` and ``num_layers`` to whichever rank owns the tensor, so levels do not depend on
the partition. A reviewed group without an explicit ``layer_id`` / ``num_layers`` (an index by
tensor position) would be numbered per rank, and is refused. ``state_dict()`` consolidates
every rank's state (mmengine's checkpoint hook saves it from rank 0); ``load_state_dict`` of
that consolidated dict gives each rank back its own shard, θ_0 included: resume is exact.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.registry import OPTIMIZERS
from torch.distributed.optim import ZeroRedundancyOptimizer

from ..optim.levels import layer_level
from .report import review_setting, skips_tensor


def _optimizer_class(optimizer_type: Any) -> type:
    if not isinstance(optimizer_type, str):
        return optimizer_type
    with OPTIMIZERS.switch_scope_and_registry(None) as registry:
        cls = registry.get(optimizer_type)
    if cls is None:
        raise ValueError(f'optimizer_type {optimizer_type!r} is not registered in OPTIMIZERS '
                         '(import dualopt_mm, or name a torch.optim class)')
    return cls


@OPTIMIZERS.register_module()
class DualOptZeroRedundancyOptimizer(ZeroRedundancyOptimizer):
    """torch's ZeRO-1 optimizer around any registered optimizer, DualOpt's included.

    Args:
        params: the param groups (one tensor each with DualOptOptimWrapperConstructor).
        optimizer_type: the local optimizer, a name registered in mmengine's ``OPTIMIZERS``
            (``'DualOptAdamW'``, ``'AdamW'``, ...) or a class.
        **kwargs: the local optimizer's kwargs and torch ZeRO's own
            (``parameters_as_bucket_view``, ``process_group``, ...).
    """

    def __init__(self, params: Iterable[Any], optimizer_type: Any = 'DualOptAdamW',
                 **kwargs: Any) -> None:
        params = list(params)
        optimizer_cls = _optimizer_class(optimizer_type)
        if callable(getattr(optimizer_cls, 'capture_anchors', None)):
            for index, group in enumerate(params):
                if not isinstance(group, dict):
                    continue
                mode = group.get('mode', kwargs.get('mode', 'finetune'))
                if mode != 'none' and (group.get('layer_id') is None
                                       or group.get('num_layers') is None):
                    raise ValueError(
                        f'DualOptZeroRedundancyOptimizer: param group {index} is reviewed '
                        f'(mode={mode!r}) but has no layer_id / num_layers: a layer index by '
                        'tensor position would differ between ranks. Build the groups with '
                        "optim_wrapper=dict(constructor='DualOptOptimWrapperConstructor')")
            if not params or not isinstance(params[0], dict):
                raise ValueError('DualOptZeroRedundancyOptimizer with a DualOpt optimizer needs '
                                 'the param groups of DualOptOptimWrapperConstructor')
        super().__init__(params, optimizer_cls, **kwargs)

    # -- what WeightRollbackHook and the report read ------------------------------------
    @torch.no_grad()
    def capture_anchors(self, params: Optional[Iterable[torch.Tensor]] = None) -> int:
        """θ_0 of this rank's shard (the local DualOpt optimizer's
        :meth:`~dualopt_mm.optim.review.DualOptOptimizer.capture_anchors`)."""
        local = {id(p) for g in self.optim.param_groups for p in g['params']}
        if params is not None:
            params = [p for p in params if id(p) in local]
        return self.optim.capture_anchors(params)

    def review_levels(self) -> List[Tuple[torch.Tensor, Optional[int], Optional[int], float]]:
        """Per tensor of *all* ranks, in group order: ``(param, layer_id, num_layers, k_i)``,
        from the groups' explicit layer ids (the same on every rank)."""
        fallback = dict(getattr(self.optim, 'defaults', {}), **self.defaults)
        rows = []
        for group in self.param_groups:
            for p in group['params']:
                mode = review_setting(group, 'mode', fallback)
                layer_id, num_layers = group.get('layer_id'), group.get('num_layers')
                if (mode == 'none' or layer_id is None or not p.requires_grad
                        or skips_tensor(group, p.ndim, fallback)):
                    rows.append((p, None, None, 0.0))
                    continue
                level = layer_level(layer_id, num_layers,
                                    k_max=review_setting(group, 'k_max', fallback),
                                    k_min=review_setting(group, 'k_min', fallback),
                                    gamma=review_setting(group, 'gamma', fallback),
                                    reverse=review_setting(group, 'reverse', fallback))
                rows.append((p, layer_id, num_layers, level))
        return rows

    def state_dict(self) -> dict:
        """Consolidate every rank's shard on rank 0 and return it there (``{}`` elsewhere),
        as mmengine's ``ZeroRedundancyOptimizer`` does; a collective: call it on all ranks."""
        self.consolidate_state_dict()
        return super().state_dict() if is_main_process() else {}
