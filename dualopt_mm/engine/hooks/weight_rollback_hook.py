r"""``WeightRollbackHook``: θ_0 after the pretrained weights are loaded, drift logging, and the
review step for optimizers that are not DualOpt's.

In mmengine's ``Runner.train()`` the optimizer is built before ``init_cfg=Pretrained`` and
``load_from`` fill the model (``load_checkpoint`` calls ``after_load_checkpoint`` before
copying the weights; a resume then restores the optimizer state, θ_0 included); the train loop
then calls **``before_train``** (docs/integration.md). So at ``before_train`` the weights are
the pretrained ones, or the resumed ones. On a fresh start the hook refines ``pretrained=
'auto'`` to the tensors a checkpoint filled (:mod:`.entries`), renumbers the layers and
captures θ_0; on resume θ_0 is whatever the checkpoint holds and nothing is re-captured.
Without the hook DualOpt optimizers capture θ_0 lazily at a tensor's first step (also the
pretrained weights); the hook adds drift logs, the refinement, the review of non-DualOpt
optimizers (``review=True``), the early λ check and ``dualopt_levels.json``.

How the run's strategy holds the tensors (DDP, ZeRO-1, FSDP, DeepSpeed: names, unsharded
shapes, which rank holds which part of θ_0) comes from :mod:`dualopt_mm.engine.strategies`.
"""
from __future__ import annotations

import json
import logging
import os.path as osp
from typing import Any, Optional

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

from ...optim.base import reviews_itself
from ...optim.hyperparams import REVIEW_DEFAULTS, check_mode, check_review_group, review_kwargs
from ...optim.levels import layer_level, review_weight
from ..layer_index import LAYER_INDEX_STRATEGIES
from ..pretrained import checkpoint_tensors_shapes, filled_names, state_dict_of
from ..report import format_table, review_setting, skips_tensor
from ..schedule_peak import flatten_schedulers, peak_lr
from ..strategies import StrategyAdapter, adapter_for
from .drift import block_sums, drift_from_sums
from .entries import Entry, entries_from_groups, entries_from_names, is_annotated, refine_modes
from .foreign_resume import anchor_foreign_resume
from .foreign_review import ForeignAnchors

#: The checkpoint key of the hook's own state (θ_0 and layer table of non-DualOpt optimizers).
CHECKPOINT_KEY = 'weight_rollback'

LAMBDA_CHECKS = ('error', 'warn', 'off')

DATA_BATCH = Optional[Any]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _optimizers(optim_wrapper: Any) -> list[torch.optim.Optimizer]:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return [wrapper.optimizer for wrapper in optim_wrapper.values()]
    return [optim_wrapper.optimizer]


@HOOKS.register_module()
class WeightRollbackHook(Hook):
    r"""Capture θ_0 after pretrained weights are loaded, keep it across resume, log drift.

    Add it with ``custom_hooks = [dict(type='WeightRollbackHook')]``. It works with DualOpt
    optimizers (θ_0 lives in their state), and with any other optimizer (θ_0 lives in this
    hook, saved under the checkpoint key ``'weight_rollback'``), where ``review=True`` also
    applies the review step :math:`θ ← θ̂ − λ(θ̂ − a)`, :math:`λ = η_t k_i` (``'absolute'``) or
    :math:`(η_t/η_{base}) k_i` (``'base_lr'``) after each optimizer step, through a torch
    step post-hook: a step skipped by the AMP grad scaler (inf/nan gradients) or by gradient
    accumulation calls no ``optimizer.step()`` and so no review either.

    Logged every ``interval`` iterations: ``train/drift/<block>`` = ‖θ − θ_0‖ / ‖θ_0‖ over the
    fine-tuned tensors of each block, and ``train/drift/all``, via the message hub (LoggerHook
    writes them to ``vis_data/scalars.json`` and to TensorBoard / other visualizer backends).
    Written once at ``before_train`` on rank 0: ``<log_dir>/dualopt_levels.json`` (one row per
    tensor: name, block, layer_id, num_layers, level, lr, weight_decay, mode).

    Args:
        interval: log drift every ``interval`` training iterations; 0 disables drift logging.
        review: apply the review step after the steps of an optimizer that is not DualOpt's.
            Refused (ValueError) with a DualOpt optimizer, which reviews by itself.
        check_lambda: what to do when the review weight λ at the largest lr the param
            schedulers reach (an upper bound, after ``auto_scale_lr``) exceeds 1:
            ``'error'`` (ValueError), ``'warn'`` or ``'off'``.
        refine_pretrained: on a fresh start, set the mode of groups the constructor built with
            ``pretrained='auto'`` from the tensors a checkpoint filled: filled → the run's
            mode, not filled → ``'none'``; then renumber the layers over the reviewed ones.
        write_levels: write ``dualopt_levels.json`` and log the level table.
        mode: for groups without a ``mode`` key (optimizer not built by
            DualOptOptimWrapperConstructor): ``'finetune'`` or ``'scratch'``.
        pretrained: for such groups in finetune mode, the tensors to track when no checkpoint
            is configured: ``'auto'`` (modules with ``init_cfg=Pretrained``, else
            ``backbone.*``, else all), ``'backbone'``, ``'all'`` or a list of name prefixes.
        layer_index: for such groups, the layer index strategy, ``'block'`` or ``'tensor'``.
        **hyperparameters: review hyper-parameters (``k_max``, ``k_min``, ``gamma``, ``k_unit``,
            ``reverse``, ``skip_1d``: :mod:`dualopt_mm.optim.hyperparams`) used where the param
            group has no such key (non-DualOpt optimizers).
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL): drift is logged the same iteration

    def __init__(self,
                 interval: int = 50,
                 review: bool = False,
                 check_lambda: str = 'error',
                 refine_pretrained: bool = True,
                 write_levels: bool = True,
                 mode: str = 'finetune',
                 pretrained: Any = 'auto',
                 layer_index: str = 'block',
                 **hyperparameters: Any) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f'interval={interval!r} must be an int >= 0 (0: no drift logging)')
        if check_lambda not in LAMBDA_CHECKS:
            raise ValueError(f'unknown check_lambda {check_lambda!r}: allowed are '
                             f'{", ".join(map(repr, LAMBDA_CHECKS))}')
        if mode not in ('finetune', 'scratch'):
            check_mode(mode, 'WeightRollbackHook mode')
            raise ValueError(f"WeightRollbackHook mode={mode!r}: use 'finetune' or 'scratch' "
                             '(leave the hook out for no review)')
        if layer_index not in LAYER_INDEX_STRATEGIES:
            raise ValueError(f'unknown layer_index {layer_index!r}: allowed are '
                             f'{", ".join(map(repr, LAYER_INDEX_STRATEGIES))}')
        if not (pretrained in ('auto', 'backbone', 'all') or
                (isinstance(pretrained, (list, tuple))
                 and all(isinstance(p, str) for p in pretrained))):
            raise ValueError(f'pretrained={pretrained!r}: allowed are "auto", "backbone", '
                             '"all" or a list of name prefixes')
        given = {k: v for k, v in hyperparameters.items() if v is not None}
        per_group = sorted(set(given) & {'layer_id', 'num_layers', 'base_lr', 'anchor_dtype'})
        if per_group:
            raise TypeError(f'WeightRollbackHook does not take {per_group}: they are per-group '
                            f'keys, set by DualOptOptimWrapperConstructor or the optimizer')
        self.settings: dict[str, Any] = review_kwargs(dict(given, mode=mode),
                                                      'WeightRollbackHook')
        check_review_group(self.settings, 'WeightRollbackHook')
        self.interval = interval
        self.review = review
        self.check_lambda = check_lambda
        self.refine_pretrained = refine_pretrained
        self.write_levels = write_levels
        self.pretrained = pretrained
        self.layer_index = layer_index

        self._resumed = False
        self._loaded_state: Optional[dict] = None
        self._load_from_shapes: Optional[dict[str, tuple]] = None
        self._entries: dict[int, list[Entry]] = {}  # id(optimizer) -> entries
        self._dualopt: dict[int, bool] = {}
        self._foreign = ForeignAnchors()  # θ_0 and review of non-DualOpt optimizers
        self._optimizer_levels: dict[int, Optional[float]] = {}  # id(param) -> DualOpt's k_i
        self._handles: list[Any] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._adapters: dict[int, StrategyAdapter] = {}  # id(optimizer) -> its strategy
        self._table_changed = False  # log the full table only when the constructor's changed

    # -- checkpoints -----------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Remember a resume (θ_0 comes from the checkpoint) or the keys ``load_from`` fills."""
        if runner._resume:
            self._resumed = True
            self._loaded_state = checkpoint.get(CHECKPOINT_KEY)
        else:
            shapes = checkpoint_tensors_shapes(state_dict_of(checkpoint))
            self._load_from_shapes = {**(self._load_from_shapes or {}), **shapes}

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Save θ_0 and the layer table of non-DualOpt optimizers (DualOpt keeps its own)."""
        if not self._foreign.anchors and not any(not d for d in self._dualopt.values()):
            return
        checkpoint[CHECKPOINT_KEY] = dict(
            anchors=self._foreign.state_dict(),
            entries={e.name: dict(mode=e.mode, layer_id=e.layer_id, num_layers=e.num_layers,
                                  block=e.block)
                     for key, entries in self._entries.items() if not self._dualopt[key]
                     for e in entries})

    # -- before_train ----------------------------------------------------------------------
    def before_train(self, runner) -> None:
        # a resume that called no after_load_checkpoint (DeepSpeedStrategy) still set the
        # iteration: θ_0 then comes from the resumed optimizer state, never the weights
        self._resumed = self._resumed or runner.iter > 0
        model = _unwrap(runner.model)
        self._optimizers, self._adapters = [], {}
        for wrapped in _optimizers(runner.optim_wrapper):  # DeepSpeed's ZeRO wraps ours
            strategy = adapter_for(runner.model, wrapped)
            self._optimizers.append(strategy.optimizer_of(wrapped))
            self._adapters[id(self._optimizers[-1])] = strategy
        adapter = self._adapters[id(self._optimizers[0])]
        names = adapter.param_names(model)
        filled: Optional[set[str]] = None
        if not self._resumed:  # names and shapes as the checkpoints hold them (unsharded)
            filled = filled_names(model, self._load_from_shapes, adapter.full_shapes(model))
        for optimizer in self._optimizers:
            key = id(optimizer)
            dualopt = reviews_itself(optimizer)
            self._dualopt[key] = dualopt
            self._adapters[key].check_hook(self.review, foreign=not dualopt)
            self._adapters[key].check_groups(optimizer, is_annotated(optimizer))
            if self.review and dualopt:
                raise ValueError(
                    f'WeightRollbackHook(review=True) with {type(optimizer).__name__}, which '
                    'applies the review step itself: the rollback would run twice; use '
                    'review=False (drift logging only)')
            if dualopt and self._resumed:
                self._table_changed |= anchor_foreign_resume(
                    optimizer, model, names, self._adapters[key], self.refine_pretrained)
            if is_annotated(optimizer):
                if not self._resumed and self.refine_pretrained:
                    self._table_changed |= refine_modes(optimizer, filled)
                entries = entries_from_groups(optimizer)
            else:
                self._table_changed = True  # the constructor's table does not exist
                if dualopt:
                    adopted = any(g.get('foreign_constructor') for g in optimizer.param_groups)
                    what = ("the optimizer reviews the backbone.* tensors by that constructor's "
                            'depths and leaves the others unreviewed' if adopted else
                            "every tensor is reviewed in the optimizer's mode, new layers "
                            '(neck, heads) included')
                    print_log(
                        f'{type(optimizer).__name__} param groups were not built by '
                        f'DualOptOptimWrapperConstructor: {what}; use '
                        "optim_wrapper=dict(constructor='DualOptOptimWrapperConstructor')",
                        logger='current', level=logging.WARNING)
                stored = (self._loaded_state or {}).get('entries') if self._resumed else None
                entries = entries_from_names(model, optimizer, names, filled,
                                             self.settings['mode'], self.pretrained,
                                             self.layer_index, stored)
            if dualopt:  # the optimizer's own index and levels are what it applies
                levels = {id(p): (layer_id, num_layers, level)
                          for p, layer_id, num_layers, level in optimizer.review_levels()}
                for entry in entries:
                    layer_id, num_layers, level = levels[id(entry.param)]
                    entry.layer_id, entry.num_layers = layer_id, num_layers
                    entry.mode = entry.group['mode']
                    self._optimizer_levels[id(entry.param)] = (
                        level if layer_id is not None else None)
            self._entries[key] = entries
            for group in optimizer.param_groups:
                if group.get('base_lr') is None:
                    group['base_lr'] = group.get('initial_lr', group['lr'])
            self._set_anchors(optimizer, entries)
            if self.review and not dualopt:
                self._handles.append(optimizer.register_step_post_hook(self._review_step))
        self._check_lambda(runner)
        if self.write_levels and is_main_process():
            self._write_levels(runner)

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _set_anchors(self, optimizer: torch.optim.Optimizer, entries: list[Entry]) -> None:
        if self._dualopt[id(optimizer)]:
            if not self._resumed:
                optimizer.capture_anchors()
            return
        stored = (self._loaded_state or {}).get('anchors', {}) if self._resumed else {}
        self._foreign.restore_or_capture(
            [(e.name, e.param) for e in entries if e.mode == 'finetune'], stored, self._resumed)

    # -- λ check and report ----------------------------------------------------------------
    def _fallback(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self._dualopt[id(optimizer)]:
            return {**self.settings, **{k: v for k, v in optimizer.defaults.items()
                                        if k in REVIEW_DEFAULTS}}
        return self.settings

    def _level(self, entry: Entry, optimizer: torch.optim.Optimizer,
               fallback: dict[str, Any]) -> Optional[float]:
        """k_i of a tensor: the DualOpt optimizer's own value, else from the group keys."""
        if entry.mode == 'none' or entry.layer_id is None:
            return None
        if self._dualopt[id(optimizer)]:
            return self._optimizer_levels.get(id(entry.param))
        if skips_tensor(dict(entry.group, mode=entry.mode), entry.param.ndim, fallback):
            return None
        group = entry.group
        return layer_level(entry.layer_id, entry.num_layers,
                           k_max=review_setting(group, 'k_max', fallback),
                           k_min=review_setting(group, 'k_min', fallback),
                           gamma=review_setting(group, 'gamma', fallback),
                           reverse=review_setting(group, 'reverse', fallback))

    def _check_lambda(self, runner) -> None:
        """λ ≤ 1 at the largest lr the schedule reaches, before the first iteration."""
        if self.check_lambda == 'off':
            return
        schedulers = flatten_schedulers(runner.param_schedulers)
        for optimizer in self._optimizers:
            fallback = self._fallback(optimizer)
            for entry in self._entries[id(optimizer)]:
                level = self._level(entry, optimizer, fallback)
                if level is None:
                    continue
                group = entry.group
                base = group.get('initial_lr', group['lr'])
                peak = peak_lr(base, schedulers)
                try:
                    review_weight(level, peak, group['base_lr'] or base,
                                  review_setting(group, 'k_unit', fallback),
                                  f'{entry.name} at the peak lr of the schedule')
                except ValueError as error:
                    if self.check_lambda == 'error':
                        raise
                    print_log(str(error), logger='current', level=logging.WARNING)
                    return  # one warning is enough

    def level_rows(self) -> list[dict[str, Any]]:
        """The rows of ``dualopt_levels.json`` (one per tensor the hook knows)."""
        rows = []
        for optimizer in self._optimizers:
            fallback = self._fallback(optimizer)
            for entry in self._entries[id(optimizer)]:
                group = entry.group
                rows.append(dict(name=entry.name, block=entry.block, layer_id=entry.layer_id,
                                 num_layers=entry.num_layers,
                                 level=self._level(entry, optimizer, fallback),
                                 lr=group.get('initial_lr', group['lr']),
                                 weight_decay=group.get('weight_decay'), mode=entry.mode))
        return rows

    def _write_levels(self, runner) -> None:
        rows = self.level_rows()
        path = osp.join(runner.log_dir, 'dualopt_levels.json')
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(rows, f, indent=1)
        if self._table_changed:
            print_log(f'DualOpt levels at before_train (written to {path}):\n'
                      + format_table(rows), logger='current')
        else:
            print_log(f'DualOpt levels as logged by the constructor, written to {path}',
                      logger='current')

    # -- every iteration -------------------------------------------------------------------
    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if self.interval and self.every_n_train_iters(runner, self.interval):
            for key, value in self.drift().items():
                runner.message_hub.update_scalar(f'train/drift/{key}', value)

    @property
    def anchors(self) -> dict[str, torch.Tensor]:
        """θ_0 the hook keeps for non-DualOpt optimizers, by tensor name."""
        return self._foreign.anchors

    def anchor_of(self, entry: Entry, optimizer: torch.optim.Optimizer
                  ) -> Optional[torch.Tensor]:
        """θ_0 of a tensor (DualOpt optimizer state or the hook's copy), None if not set."""
        if self._dualopt[id(optimizer)]:
            return optimizer.state.get(entry.param, {}).get('anchor')
        return self._foreign.anchors.get(entry.name)

    def drift(self) -> dict[str, float]:
        """‖θ − θ_0‖ / ‖θ_0‖ per block of fine-tuned tensors, and over all of them (``'all'``),
        of the whole model on every rank: where a rank holds only part of the tensors or of
        θ_0 (FSDP, ZeRO, DeepSpeed) the squared norms are added over the ranks (a collective:
        every rank computes the drift at the same iterations)."""
        sums: dict[str, torch.Tensor] = {}
        for optimizer in self._optimizers:
            rows = [(e.block, e.param, self.anchor_of(e, optimizer))
                    for e in self._entries[id(optimizer)] if e.mode == 'finetune']
            for block, value in block_sums(rows, self._adapters[id(optimizer)].reduce_sum
                                           ).items():
                sums[block] = sums[block] + value if block in sums else value
        return drift_from_sums(sums)

    def _review_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """θ ← θ̂ − λ(θ̂ − a) after a non-DualOpt step (torch step post-hook)."""
        fallback = self._fallback(optimizer)
        self._foreign.review(
            (e.name, e.param, e.group, e.mode == 'finetune', self._level(e, optimizer, fallback),
             review_setting(e.group, 'k_unit', fallback))
            for e in self._entries[id(optimizer)])
