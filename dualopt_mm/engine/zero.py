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
every rank's state; ``load_state_dict`` of that consolidated dict gives each rank back its
own shard, θ_0 included: resume is exact. mmengine saves checkpoints on rank 0 only, so add
:class:`ZeroConsolidateHook` to ``custom_hooks`` (it gathers the shards on all ranks right
before each CheckpointHook save).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS, OPTIMIZERS
from torch.distributed.optim import ZeroRedundancyOptimizer

from ..optim.base import reviews_itself
from ..optim.levels import layer_level
from ..registry import optimizer_class
from .report import review_setting, skips_tensor


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
        optimizer_cls = optimizer_class(optimizer_type)
        if reviews_itself(optimizer_cls):
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
        count = self.optim.capture_anchors(params)
        self._expose_anchors()
        return count

    def review_levels(self) -> list[tuple[torch.Tensor, Optional[int], Optional[int], float]]:
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

    # -- checkpoints ----------------------------------------------------------------------
    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        loss = super().step(closure, **kwargs)
        self._steps = getattr(self, '_steps', 0) + 1
        self._expose_anchors()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Each rank keeps its own shard (θ_0 included) in the local optimizer; the copy of
        the whole state torch's ZeRO leaves in the wrapper (``None`` for other ranks' tensors)
        is dropped, so memory stays sharded."""
        super().load_state_dict(state_dict)
        self.state.clear()
        self._expose_anchors()

    def _expose_anchors(self) -> None:
        """This rank's θ_0 tensors also under ``self.state[p]['anchor']`` (the same tensors,
        no copy), where WeightRollbackHook reads them for its drift logs (so each rank logs
        the drift of its own shard)."""
        for group in self.optim.param_groups:
            for p in group['params']:
                anchor = self.optim.state.get(p, {}).get('anchor')
                if anchor is not None:
                    self.state[p] = {'anchor': anchor}

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard on rank ``to`` (a collective: all ranks call it)."""
        super().consolidate_state_dict(to)
        self._consolidated_at = getattr(self, '_steps', 0)

    def state_dict(self) -> dict:
        """The consolidated state on rank 0 (``{}`` elsewhere).

        Gathering the shards is a collective, while mmengine saves checkpoints on rank 0 only
        (``Runner.save_checkpoint`` is ``master_only``): mmengine's own ZeRO optimizer
        deadlocks there. Here the shards must have been gathered since the last step, by
        :class:`ZeroConsolidateHook` (before each CheckpointHook save) or by calling
        :meth:`consolidate_state_dict` on all ranks; otherwise a RuntimeError says so instead
        of hanging. A single process consolidates by itself.
        """
        if getattr(self, '_consolidated_at', None) != getattr(self, '_steps', 0):
            if self.world_size > 1:
                raise RuntimeError(
                    'DualOptZeroRedundancyOptimizer.state_dict(): the optimizer state is '
                    'sharded and was not gathered since the last step (mmengine saves '
                    "checkpoints on rank 0 only). Add custom_hooks=[dict(type="
                    "'ZeroConsolidateHook')], or call consolidate_state_dict() on all ranks "
                    'before saving')
            self.consolidate_state_dict()
        return super().state_dict() if is_main_process() else {}


@HOOKS.register_module()
class ZeroConsolidateHook(Hook):
    """Gathers the shards of every ZeRO optimizer on all ranks right before CheckpointHook
    saves (same schedule), so that rank 0's ``state_dict()`` has the whole state.

    Add it to ``custom_hooks`` with a ZeRO optimizer; it runs at priority LOW, before
    CheckpointHook (VERY_LOW).
    """

    priority = 'LOW'

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        self._consolidate_if_saving(runner, by_epoch=False)

    def after_train_epoch(self, runner) -> None:
        self._consolidate_if_saving(runner, by_epoch=True)

    def _consolidate_if_saving(self, runner, by_epoch: bool) -> None:
        hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        if hook is None or hook.by_epoch != by_epoch:
            return
        if by_epoch:
            due = hook.every_n_epochs(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_epoch(runner))
        else:
            due = hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_iter(runner))
        if not due:
            return
        wrappers = runner.optim_wrapper.values() if isinstance(
            runner.optim_wrapper, OptimWrapperDict) else [runner.optim_wrapper]
        for wrapper in wrappers:
            if isinstance(wrapper.optimizer, ZeroRedundancyOptimizer):
                wrapper.optimizer.consolidate_state_dict()


def _explain_torch_optim_lookup() -> None:
    """mmengine's ``ZeroRedundancyOptimizer`` finds ``optimizer_type`` with
    ``getattr(torch.optim, name)``: a registered name that torch does not have
    (``'DualOptAdamW'``) fails there with a bare AttributeError. Before that lookup, say which
    spelling works. Names torch has, and names registered nowhere, are left to mmengine."""
    from mmengine.optim import ZeroRedundancyOptimizer as MMEngineZero
    init = MMEngineZero.__init__
    if getattr(init, '_dualopt_explained', False):
        return

    @functools.wraps(init)
    def __init__(self: Any, params: Any, optimizer_type: Any, **kwargs: Any) -> None:
        if isinstance(optimizer_type, str) and not hasattr(torch.optim, optimizer_type):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                known = registry.get(optimizer_type) is not None
            if known:
                raise ValueError(
                    f"mmengine's ZeroRedundancyOptimizer looks optimizer_type up in "
                    f"torch.optim only, which has no {optimizer_type!r}. Use "
                    f"type='DualOptZeroRedundancyOptimizer', optimizer_type={optimizer_type!r} "
                    "(any registered optimizer), or keep type='ZeroRedundancyOptimizer' with "
                    "optimizer_type='AdamW' / 'SGD' / 'Adam' and "
                    "constructor='DualOptOptimWrapperConstructor', which swaps in DualOpt's")
        init(self, params, optimizer_type, **kwargs)

    __init__._dualopt_explained = True  # type: ignore[attr-defined]
    MMEngineZero.__init__ = __init__


_explain_torch_optim_lookup()
