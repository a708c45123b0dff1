r"""Each tensor's level :math:`k_i` and review weight :math:`\lambda` over the param groups of a
DualOpt optimizer: the layer index (explicit ``layer_id`` or tensor order), re-resolved when a
level hyper-parameter, the set of groups or a ``requires_grad`` changes, and the warnings that
say when levels move. The formulas are in :mod:`~dualopt_mm.optim.levels`."""
from __future__ import annotations

import warnings
from typing import Any, Optional

from torch import Tensor

from .foreign_groups import adopt_foreign_groups
from .groups import first_few, group_label, param_label
from .hyperparams import check_layer, check_review_group
from .levels import layer_level, reference_level, review_scale, review_weight, skips_1d

__all__ = ['LayerLevelsMixin']

# Group keys that decide which tensors are reviewed, their level k_i and the review weight; a
# change of any of them (a scheduler driving k_max, a value set by user code) re-validates the
# group and re-resolves the levels at the next step.
_LEVEL_KEYS = ('mode', 'k_max', 'k_min', 'gamma', 'reverse', 'skip_1d', 'layer_id',
               'num_layers', 'reference', 'eps', 'k_unit', 'base_lr', 'anchor_dtype')


class LayerLevelsMixin:
    """The levels part of :class:`~dualopt_mm.optim.base.DualOptOptimizer` (a mixin of it)."""

    param_groups: list[dict[str, Any]]
    state: Any

    def _invalidate_levels(self) -> None:
        """Force the levels to be resolved again at the next step (the last resolved levels
        are kept, to tell which tensors change level)."""
        self._signatures: Optional[list[tuple]] = None
        if not hasattr(self, '_levels'):
            self._levels: list[list[Optional[float]]] = []
            self._layer_ids: list[list[Optional[tuple[int, int]]]] = []
            self._max_levels: list[float] = []
            self._resolved_signatures: Optional[list[tuple]] = None
            self._hyperparameters_changed = False
            # warn-once bookkeeping (not in the state_dict, like the levels)
            self._warned_lr_above_base_lr: set[int] = set()
            self._warned_tensor_order = False

    @staticmethod
    def _signature(group: dict[str, Any]) -> tuple:
        # requires_grad is part of it: a tensor unfrozen later (gradual unfreezing) is indexed
        # and reviewed from its first step
        return ((len(group['params']),) + tuple(group.get(k) for k in _LEVEL_KEYS)
                + (tuple(p.requires_grad for p in group['params']),))

    @staticmethod
    def _is_reviewed(p: Tensor, group: dict[str, Any], count_frozen: bool = False) -> bool:
        if group['mode'] == 'none' or not (p.requires_grad or count_frozen):
            return False
        return not skips_1d(group['skip_1d'], group['mode'], p.ndim)

    def _ensure_levels(self) -> None:
        signatures = [self._signature(g) for g in self.param_groups]
        if signatures != self._signatures:
            before = self._stepped_levels()
            self._resolve_levels(signatures)
            self._warn_changed_levels(before)

    def _warn_tensor_order_per_group(self, implicit: list[int]) -> None:
        """Say once when many one-tensor groups carry no ``layer_id``: mmengine's constructors
        (``paramwise_cfg``, layer-wise lr decay) build such groups, and then every tensor gets a
        level of its own and every group is reviewed, new heads included."""
        if self._warned_tensor_order or len(implicit) < 8 or not all(
                len(self.param_groups[gi]['params']) == 1 for gi in implicit):
            return
        self._warned_tensor_order = True
        warnings.warn(
            f'DualOpt: {len(implicit)} param groups of one tensor each without layer_id (built '
            f'by an mmengine constructor?): every tensor gets a level of its own (tensor order) '
            f"and every group is reviewed in mode={self.param_groups[implicit[0]]['mode']!r}, "
            f'new layers (neck, heads) included. Use optim_wrapper=dict(constructor='
            f"'DualOptOptimWrapperConstructor') for block levels and the pretrained/new split "
            f'(it keeps a layer-decay constructor\'s lr and weight decay).', stacklevel=4)

    def _stepped_levels(self) -> dict[int, tuple[str, Optional[float]]]:
        """The current level of every tensor that has been stepped (has state), by id."""
        levels: dict[int, tuple[str, Optional[float]]] = {}
        for gi, (group, group_levels) in enumerate(zip(self.param_groups, self._levels)):
            for pi, (p, level) in enumerate(zip(group['params'], group_levels)):
                if self.state.get(p):
                    levels[id(p)] = (param_label(group, gi, pi), level)
        return levels

    def _warn_changed_levels(self, before: dict[int, tuple[str, Optional[float]]]) -> None:
        """Say when tensors already trained change their review level because the set of
        indexed tensors changed (``add_param_group``, a tensor frozen or unfrozen): with the
        tensor-order index (no ``layer_id``) every tensor's depth is its place among the
        reviewed ones, so adding or unfreezing tensors moves the others."""
        if not before:
            return
        changed = []
        for group, group_levels in zip(self.param_groups, self._levels):
            for p, level in zip(group['params'], group_levels):
                old = before.get(id(p))
                if old is not None and old[1] is not None and level is not None \
                        and old[1] != level and not self._hyperparameters_changed:
                    changed.append(f'{old[0]}: {old[1]:.6g} -> {level:.6g}')
        if changed:
            shown = first_few(changed, 4)
            warnings.warn(
                f'DualOpt: the tensor-order layer index changed (param groups added, or tensors '
                f'frozen / unfrozen), so tensors already trained get new review levels: '
                f'{shown}. This is the rule (a tensor\'s level follows its place among the '
                f'reviewed tensors); to pin levels, give every group a layer_id and num_layers '
                f'(DualOptOptimWrapperConstructor does).', stacklevel=4)

    def _resolve_levels(self, signatures: list[tuple]) -> None:
        old = self._resolved_signatures
        # a change of k_max / gamma / ... (a scheduler, a resumed checkpoint) changes levels on
        # purpose; only a change of the indexed set is worth a warning
        self._hyperparameters_changed = old is not None and any(
            a[1:-1] != b[1:-1] for a, b in zip(old, signatures))
        groups = self.param_groups
        reviewed: list[list[bool]] = []
        for gi, group in enumerate(groups):
            check_review_group(group, f'param group {gi}')
            reference = group.get('reference', False)
            reviewed.append([self._is_reviewed(p, group, count_frozen=reference)
                             for p in group['params']])
        # a layer-decay constructor's groups: review what their keys place (foreign_groups.py)
        adopt_foreign_groups(self, reviewed)
        # global index: explicit layer_id per group, or tensor order over reviewed tensors
        explicit, implicit = [], []
        for gi, group in enumerate(groups):
            if group.get('reference', False) or not any(reviewed[gi]):
                continue
            (explicit if group['layer_id'] is not None else implicit).append(gi)
        if explicit and implicit:
            raise ValueError(
                f'param groups {explicit} set layer_id but the reviewed groups {implicit} do '
                f'not: set layer_id on every reviewed group (mode != "none") or on none of '
                f'them (then the index is the tensor order)')
        inferred_num_layers = 1 + max((groups[gi]['layer_id'] for gi in explicit), default=-1)
        num_implicit = sum(sum(reviewed[gi]) for gi in implicit)
        self._warn_tensor_order_per_group(implicit)

        levels, layer_ids, max_levels = [], [], []
        position = 0
        for gi, group in enumerate(groups):
            where = f'param group {gi}'
            args = (group['k_max'], group['k_min'], group['gamma'])
            group_levels: list[Optional[float]] = []
            group_ids: list[Optional[tuple[int, int]]] = []
            for pi, is_reviewed in enumerate(reviewed[gi]):
                if not is_reviewed:
                    group_levels.append(None)
                    group_ids.append(None)
                    continue
                if group.get('reference', False):
                    if group['reverse']:
                        raise ValueError(f'reverse=True is not part of the reference AdamB '
                                         f'(reference=True) ({where})')
                    n = len(group['params'])
                    layer = (pi, n)
                    level = reference_level(pi, n, *args, eps=group['eps'], where=where)
                else:
                    if gi in explicit:
                        num_layers = group['num_layers'] or inferred_num_layers
                        layer = (group['layer_id'], num_layers)
                        check_layer(*layer, where=where)
                    else:
                        layer = (position, num_implicit)
                        position += 1
                    level = layer_level(*layer, *args, reverse=group['reverse'])
                group_levels.append(level)
                group_ids.append(layer)
            levels.append(group_levels)
            layer_ids.append(group_ids)
            max_levels.append(max((k for k in group_levels if k is not None), default=0.0))
        self._levels, self._layer_ids, self._max_levels = levels, layer_ids, max_levels
        self._signatures = self._resolved_signatures = signatures

    def review_levels(self) -> list[tuple[Tensor, Optional[int], Optional[int], float]]:
        """Per tensor, in group order: ``(param, layer_id, num_layers, k_i)``.

        ``k_i`` is in the unit of ``k_unit``. Tensors that are not reviewed (``mode='none'``,
        ``skip_1d``, ``requires_grad=False``) are listed as ``(param, None, None, 0.0)``.
        """
        self._ensure_levels()
        rows = []
        for group, group_levels, group_ids in zip(self.param_groups, self._levels,
                                                  self._layer_ids):
            for p, level, layer in zip(group['params'], group_levels, group_ids):
                if level is None or layer is None:
                    rows.append((p, None, None, 0.0))
                else:
                    rows.append((p, layer[0], layer[1], level))
        return rows

    # ------------------------------------------------------------------ anchors

    def _review_scale(self, index: int, group: dict[str, Any]) -> tuple[float, float]:
        r"""Return (:math:`\lambda / k_i`, the group's base lr) without changing the group;
        refuse :math:`\lambda > 1` for its largest level. ``base_lr=None`` resolves to
        ``initial_lr`` or ``lr``."""
        lr = float(group['lr'])
        base_lr = group['base_lr']
        resolved = base_lr is None
        if resolved:
            base_lr = float(group.get('initial_lr', lr))
        max_level = self._max_levels[index]
        if max_level == 0.0:
            return 0.0, base_lr
        where = group_label(group, index)
        scale = review_scale(lr, base_lr, group['k_unit'], where)
        if group['k_unit'] == 'base_lr' and scale > 1.0 + 1e-9:
            self._warn_lr_above_base_lr(index, group, lr, base_lr, resolved)
        review_weight(max_level, lr, base_lr, group['k_unit'], where)  # refuses lambda > 1
        return scale, base_lr

    def _warn_lr_above_base_lr(self, index: int, group: dict[str, Any], lr: float,
                               base_lr: float, resolved: bool) -> None:
        """Warn once per group: with ``k_unit='base_lr'`` an lr above ``base_lr`` (a manual
        warm-up, OneCycle) makes the review ``lr / base_lr`` times stronger than ``k_max``."""
        if index in self._warned_lr_above_base_lr:
            return
        self._warned_lr_above_base_lr.add(index)
        source = ('taken from the lr of its first step (no initial_lr: a hand-written warm-up?)'
                  if resolved or group.get('initial_lr') is None else
                  'from initial_lr (OneCycle-style schedules start below their peak)')
        warnings.warn(
            f"DualOpt: {group_label(group, index)} has lr={lr:.6g} above its base_lr="
            f"{base_lr:.6g}, {source}. With k_unit='base_lr' the review weight is "
            f'lr / base_lr * k = {lr / base_lr:.4g} * k, stronger than k_max means. Pass '
            f'base_lr=<the peak lr> to the optimizer (or k_unit=\'absolute\').', stacklevel=4)
