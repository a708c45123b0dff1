r"""The base class of the DualOpt optimizers: review hyper-parameters per group, layer levels,
anchors, validation, and a ``step()`` that runs the learning step then the review step.

The rule is in :mod:`dualopt_mm.optim`; the hyper-parameters in
:mod:`~dualopt_mm.optim.hyperparams`. A subclass adds its base optimizer's state and update
through four small methods (:meth:`DualOptOptimizer._static_key`, ``_new_batch``,
``_collect``, ``_update``), each with a per-tensor loop and a foreach twin.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .foreach import FOREACH_DEVICES
from .foreign_groups import adopt_foreign_groups
from .hyperparams import (
    REVIEW_DEFAULTS,
    anchor_dtype_name,
    check_layer,
    check_review_group,
    check_unknown_keys,
)
from .levels import layer_level, reference_level, review_scale, review_weight, skips_1d

__all__ = ['DualOptOptimizer', 'ReviewBatch', 'group_label', 'param_label', 'reviews_itself']

# Group keys that decide which tensors are reviewed, their level k_i and the review weight; a
# change of any of them (a scheduler driving k_max, a value set by user code) re-validates the
# group and re-resolves the levels at the next step.
_LEVEL_KEYS = ('mode', 'k_max', 'k_min', 'gamma', 'reverse', 'skip_1d', 'layer_id',
               'num_layers', 'reference', 'eps', 'k_unit', 'base_lr', 'anchor_dtype')

# Keys of a param group that are not hyper-parameters of the optimizer but are legitimately
# there (torch, mmengine, the constructor); a key close to a hyper-parameter name and not
# in this list or the defaults is refused as a typo.
_FOREIGN_GROUP_KEYS = ('params', 'param_names', 'param_name', 'initial_lr', 'reference',
                       'reference_step', 'block_index', 'block_name', 'differentiable',
                       'capturable', 'fused', 'decoupled_weight_decay')

_ParamsT = Union[Iterable[Tensor], Iterable[dict[str, Any]]]


def check_unsupported_flags(**flags: Any) -> None:
    """Refuse torch flags DualOpt does not implement (``capturable``, ``differentiable``,
    ``fused``): ``False``/``None`` are accepted so stock configs can swap ``type=`` alone."""
    for name, value in flags.items():
        if value not in (None, False):
            raise ValueError(
                f'{name}={value!r} is not supported by the DualOpt optimizers (accepted: False '
                f'or None); they have a foreach implementation (foreach=True/None) instead')


def check_lr(lr: Any, where: str = '') -> None:
    """torch's learning-rate check, plus: a Tensor lr is refused (it only serves capturable /
    fused, which DualOpt does not implement)."""
    if isinstance(lr, Tensor):
        raise ValueError(f'lr as a Tensor is not supported by the DualOpt optimizers; pass a '
                         f'float{where}')
    if not 0.0 <= lr:
        raise ValueError(f'Invalid learning rate: {lr}{where}')


def _dtype(name: Optional[str]) -> Optional[torch.dtype]:
    return None if name is None else getattr(torch, name)


def reviews_itself(optimizer: Any) -> bool:
    """Whether an optimizer (or its class) applies the review step itself: the DualOpt
    optimizers and wrappers around them (``DualOptZeroRedundancyOptimizer``) do."""
    return callable(getattr(optimizer, 'capture_anchors', None))


def _first_few(items: list[str], count: int) -> str:
    """``'a; b; ... (7 in all)'``: the first ``count`` items of a message list."""
    more = f'; ... ({len(items)} in all)' if len(items) > count else ''
    return '; '.join(items[:count]) + more


def group_label(group: dict[str, Any], index: int) -> str:
    """``"param group 3 ('backbone.conv1.weight')"``: the index and, when the constructor
    wrote it, the tensor's name."""
    name = group.get('param_name')
    return f'param group {index} ({name!r})' if isinstance(name, str) else f'param group {index}'


def param_label(group: dict[str, Any], group_index: int, param_index: int) -> str:
    """The name of one tensor of a group for messages: ``param_name`` (mmengine constructor),
    torch's ``param_names``, else its position."""
    name = group.get('param_name')
    if isinstance(name, str) and len(group['params']) == 1:
        return f'{name!r} (param group {group_index})'
    names = group.get('param_names')
    if isinstance(names, (list, tuple)) and param_index < len(names):
        return f'{names[param_index]!r} (param group {group_index})'
    return f'parameter {param_index} of param group {group_index}'


class ReviewBatch:
    """Tensors that share one base-update call: one set of static hyper-parameters and one
    foreach choice. Subclasses add the lists of their base optimizer's state."""

    __slots__ = ('group', 'params', 'grads', 'lrs', 'weight_decays', 'anchors',
                 'review_weights', 'on_foreach_devices')

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group  # first group of the batch: source of the static hyper-parameters
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.lrs: list[float] = []
        self.weight_decays: list[float] = []
        self.anchors: list[Optional[Tensor]] = []  # a per tensor; None: a = 0 or no review
        self.review_weights: list[float] = []  # lambda per tensor; 0: no review
        self.on_foreach_devices = True


class DualOptOptimizer(Optimizer):
    r"""Base class of :class:`DualOptSGD`, :class:`DualOptAdam` and :class:`DualOptAdamW`.

    It owns the DualOpt hyper-parameters, the anchors :math:`a`, the layer levels
    :math:`k_i`, the review weights :math:`\lambda` and the review step (the math is in
    :mod:`dualopt_mm.optim`); a subclass adds its base optimizer's state and update through
    four small methods (:meth:`_static_key`, :meth:`_new_batch`, :meth:`_collect`, :meth:`_update`).

    The review hyper-parameters (:mod:`~dualopt_mm.optim.hyperparams`) are all in
    ``defaults``, so every param group carries them and mmengine param schedulers can drive
    them; any of them can be set per group, and a change is validated at the next step.

    Per-parameter state: the base optimizer's (torch's names) plus ``'anchor'`` (finetune mode,
    reviewed tensors only), captured before the tensor's first update.
    """

    #: whether the base optimizer takes sparse gradients (torch's SGD does, Adam does not)
    _supports_sparse = False

    def __init__(self, params: _ParamsT, defaults: dict[str, Any]) -> None:
        defaults['anchor_dtype'] = anchor_dtype_name(defaults['anchor_dtype'])
        self._invalidate_levels()
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and state
    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        """torch's own hyper-parameter checks for one group (subclasses)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch semantics), validating its hyper-parameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f' ({group_label(group, len(self.param_groups) - 1)})'
        try:
            check_unknown_keys(param_group, list(self.defaults) + list(_FOREIGN_GROUP_KEYS),
                               where.strip(' ()'))
            check_unsupported_flags(**{name: group.get(name) for name in
                                       ('capturable', 'differentiable', 'fused')})
            self._check_hyperparameters(group, where)
            check_review_group(group, where.strip(' ()'))
            group['anchor_dtype'] = anchor_dtype_name(group['anchor_dtype'])
            for pi, p in enumerate(group['params']):
                if torch.is_complex(p):
                    raise ValueError(f'complex parameters are not supported '
                                     f'({param_label(group, len(self.param_groups) - 1, pi)})')
        except ValueError:
            self.param_groups.pop()
            raise
        self._invalidate_levels()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, with three DualOpt rules.

        - Keys of the current groups that the saved groups lack are kept (a checkpoint of
          torch's AdamW has no ``mode`` / ``layer_id`` / ``k_max``: the constructor's values
          stay, instead of the optimizer defaults).
        - Review hyper-parameters saved in the checkpoint win over the current ones (resume
          continues the saved run, as torch does for ``lr``); where they differ, a warning
          names them and the way to change them.
        - Every state tensor must have its parameter's shape (a changed model, e.g. a head
          resized from 2 to 3 classes, fails here, naming the tensor and both shapes).
        """
        current = [dict(group) for group in self.param_groups]
        saved_groups = state_dict.get('param_groups', [])
        if len(saved_groups) != len(current):
            raise ValueError(
                f'the loaded optimizer state has {len(saved_groups)} param groups, this '
                f'optimizer {len(current)}: it was written for another model or grouping '
                f'(mmengine makes one group per tensor whenever paramwise_cfg is set, as '
                f'DualOptOptimWrapperConstructor does, and a single group otherwise). To '
                f'switch a running experiment to DualOpt, give the old config the same '
                f'paramwise_cfg before its last checkpoint, or start the DualOpt run from the '
                f'weights with load_from=<checkpoint> instead of resume')
        differing = []
        for gi, (now, saved) in enumerate(zip(current, saved_groups)):
            for key in REVIEW_DEFAULTS:
                if key in saved and key in now and now[key] is not None \
                        and saved[key] != now[key] and key != 'base_lr':
                    differing.append(f'{group_label(now, gi)}: {key}={saved[key]!r} in the '
                                     f'checkpoint, {now[key]!r} now')
        super().load_state_dict(state_dict)
        for group, now, saved in zip(self.param_groups, current, saved_groups):
            for key, value in now.items():
                if key not in saved and key != 'params':
                    group[key] = value
        self._invalidate_levels()
        if differing:
            shown = _first_few(differing, 5)
            warnings.warn(
                f'DualOpt: the loaded optimizer state keeps its own review settings, which '
                f'differ from the configured ones: {shown}. To continue with the new values, '
                f'set them on optimizer.param_groups after loading, or start a new run from '
                f'the weights (load_from) instead of resuming.', stacklevel=2)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._check_loaded_state(state['state'], state['param_groups'])
        super().__setstate__(state)
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            group['anchor_dtype'] = anchor_dtype_name(group['anchor_dtype'])
            anchor_dtype = _dtype(group['anchor_dtype'])
            for p in group['params']:
                p_state = self.state.get(p)
                if not p_state:
                    continue
                anchor = p_state.get('anchor')
                # Optimizer.load_state_dict casts floating state to the param dtype: restore
                # the low-precision anchor (exact: the cast was a widening one).
                if anchor is not None and anchor.dtype != (anchor_dtype or p.dtype):
                    p_state['anchor'] = anchor.to(anchor_dtype or p.dtype)
                step = p_state.get('step')
                if isinstance(step, Tensor) and step.device.type != 'cpu':
                    # a checkpoint of a capturable/fused torch optimizer: keep the step count
                    # on the host so reading it never synchronises the device
                    p_state['step'] = step.to('cpu', torch.float32)
        self._invalidate_levels()

    @staticmethod
    def _check_loaded_state(state: dict[Any, Any], param_groups: list[dict[str, Any]]) -> None:
        """Every per-parameter state tensor but the step count has its parameter's shape."""
        for gi, group in enumerate(param_groups):
            for pi, p in enumerate(group['params']):
                p_state = state.get(p) if isinstance(p, Tensor) else None
                for key, value in (p_state or {}).items():
                    if key == 'step' or (key != 'anchor' and not isinstance(value, Tensor)):
                        continue
                    if value is None and key == 'anchor':
                        continue
                    if not isinstance(value, Tensor) or value.shape != p.shape:
                        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                        what = 'an anchor (theta_0)' if key == 'anchor' else f'a {key!r}'
                        raise ValueError(
                            f'the loaded optimizer state has {what} of shape {shape} for '
                            f'{param_label(group, gi, pi)}, whose shape is now '
                            f'{tuple(p.shape)}: the checkpoint was written for another model '
                            f'(a resized head?). Resume only with the model that wrote it; to '
                            f'reuse its weights in a changed model, start a new run with '
                            f'load_from=<checkpoint> instead of resume')

    # ------------------------------------------------------------------ layer levels
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
            shown = _first_few(changed, 4)
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
    @staticmethod
    def _new_anchor(p: Tensor, group: dict[str, Any]) -> Tensor:
        """A copy of ``p`` (a parameter or the value to anchor it to) in the anchor dtype."""
        dtype = _dtype(group['anchor_dtype']) or p.dtype
        return p.detach().to(dtype=dtype, copy=True, memory_format=torch.preserve_format)

    @torch.no_grad()
    def capture_anchors(self, params: Optional[Iterable[Tensor]] = None,
                        values: Optional[Mapping[Tensor, Tensor]] = None) -> int:
        r"""Store the current value of the reviewed finetune-mode tensors as :math:`\theta_0`.

        Overrides anchors captured before (lazily at a first step, or by an earlier call).
        ``WeightRollbackHook`` calls it at ``before_train``, after the pretrained weights are
        loaded, unless the run resumes (then the anchors come from the checkpoint).

        Args:
            params: restrict to these tensors (each must belong to the optimizer); ``None``:
                every reviewed tensor of every ``mode='finetune'`` group.
            values: :math:`\theta_0` to store instead of the current value, by tensor (e.g.
                read from a pretrained checkpoint); every captured tensor must have one, of
                its shape.

        Returns:
            The number of anchors captured.
        """
        self._ensure_levels()
        wanted = None
        if values is not None and params is None:
            params = list(values)
        if params is not None:
            wanted = {id(p) for p in params}
            known = {id(p) for g in self.param_groups for p in g['params']}
            if not wanted <= known:
                raise ValueError(f'capture_anchors: {len(wanted - known)} of the given tensors '
                                 f'are not parameters of this optimizer')
        count = 0
        for gi, (group, group_levels) in enumerate(zip(self.param_groups, self._levels)):
            if group['mode'] != 'finetune':
                continue
            for pi, (p, level) in enumerate(zip(group['params'], group_levels)):
                if level is None or (wanted is not None and id(p) not in wanted):
                    continue
                if values is not None and p not in values:
                    raise ValueError(f'capture_anchors: no value given for '
                                     f'{param_label(group, gi, pi)} (values must cover every '
                                     f'tensor in params)')
                source = p if values is None else values[p]
                if source.shape != p.shape:
                    raise ValueError(f'capture_anchors: the value given for '
                                     f'{param_label(group, gi, pi)} has shape '
                                     f'{tuple(source.shape)}, the tensor {tuple(p.shape)}')
                self.state[p]['anchor'] = self._new_anchor(
                    source.to(device=p.device, dtype=p.dtype), group)
                count += 1
        return count

    def _check_anchor_source(self, p: Tensor, group: dict[str, Any], group_index: int,
                             param_index: int) -> None:
        """Refuse to anchor lazily a tensor that was trained before without an anchor.

        Its state then comes from another optimizer (a checkpoint of torch's AdamW resumed
        under DualOpt) and its current value is a mid-training weight, not theta_0.
        """
        state = self.state.get(p)
        if not state or state.get('anchor') is not None:
            return
        raise RuntimeError(
            f'{param_label(group, group_index, param_index)} has optimizer state from earlier '
            f'steps ({", ".join(sorted(map(str, state)))}) but no theta_0 (\'anchor\'): the '
            f'state was loaded from a checkpoint written by another optimizer (e.g. a stock '
            f'AdamW run resumed with DualOpt), so its current value is a mid-training weight, '
            f'not the pretrained one. Add WeightRollbackHook to the config (on resume it takes '
            f'theta_0 from the pretrained checkpoint the config names: init_cfg=Pretrained or '
            f'load_from), or start the DualOpt run fresh from the pretrained weights, or call '
            f'optimizer.capture_anchors() to anchor to the current weights on purpose.')

    # ------------------------------------------------------------------ the step
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

    def _start_group(self, group: dict[str, Any]) -> None:
        """Called once per group and step, grads or not (subclasses: per-group counters)."""

    def _static_key(self, group: dict[str, Any]) -> tuple:
        """Hyper-parameters that must be equal for all tensors of one batch."""
        raise NotImplementedError

    def _new_batch(self, group: dict[str, Any]) -> ReviewBatch:
        raise NotImplementedError

    def _collect(self, batch: Any, p: Tensor, grad: Tensor, state: dict[str, Any],
                 group: dict[str, Any]) -> None:
        """Create the base optimizer's state lazily and append the tensor to ``batch``."""
        raise NotImplementedError

    def _update(self, batch: Any, foreach: bool) -> None:
        """Run the learning step and the review step on ``batch`` (loop or foreach)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        """Perform one optimization step: the base learning step, then the review step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._ensure_levels()
        # 1. validate everything (review weights, gradients, anchors) before changing anything,
        #    so a refused step leaves the optimizer exactly as it was
        scales = [self._review_scale(gi, group) for gi, group in enumerate(self.param_groups)]
        pending: list[tuple[int, Tensor, Tensor, Optional[float]]] = []
        for gi, group in enumerate(self.param_groups):
            finetune = group['mode'] == 'finetune'
            for pi, (p, level) in enumerate(zip(group['params'], self._levels[gi])):
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse and not self._supports_sparse:
                    raise RuntimeError(
                        f'{type(self).__name__} does not support sparse gradients '
                        f'({param_label(group, gi, pi)}), like torch.optim.'
                        f'{type(self).__name__[len("DualOpt"):]}; use DualOptSGD or a dense '
                        f'embedding (sparse=False)')
                if finetune and level:  # at k = 0 the anchor is never used
                    self._check_anchor_source(p, group, gi, pi)
                pending.append((gi, p, grad, level))
        # 2. the learning step then the review step, per batch of tensors that share
        #    hyper-parameters
        for group, (_, base_lr) in zip(self.param_groups, scales):
            if group['base_lr'] is None:
                group['base_lr'] = base_lr
            self._start_group(group)
        batches: dict[tuple, ReviewBatch] = {}
        for gi, p, grad, level in pending:
            group = self.param_groups[gi]
            sparse = grad.is_sparse
            key = ((False if sparse else group['foreach'], sparse)
                   + self._static_key(group))
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = self._new_batch(group)
            state = self.state[p]
            self._collect(batch, p, grad, state, group)
            if p.device.type not in FOREACH_DEVICES:
                batch.on_foreach_devices = False
            anchor, weight = None, 0.0
            if level is not None:
                if group['mode'] == 'finetune':
                    anchor = state.get('anchor')
                    if anchor is None:  # lazily, before the first update of the tensor
                        anchor = state['anchor'] = self._new_anchor(p, group)
                weight = scales[gi][0] * level
            batch.anchors.append(anchor)
            batch.review_weights.append(weight)

        # learning step then review step, per batch of tensors that share hyper-parameters
        for (foreach, *_), batch in batches.items():
            self._update(batch, batch.on_foreach_devices if foreach is None else bool(foreach))
        return loss
