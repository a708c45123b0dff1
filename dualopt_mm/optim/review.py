r"""The review step shared by every DualOpt optimizer: anchors, layer levels, the base class.

After its plain torch step (SGD, Adam, AdamW; the *learning step*) every reviewed tensor takes
the *review step*, in the "real-time" form of OLOR (AAAI 2024) and DualOpt: it acts on the
freshly updated :math:`\hat\theta`, not on :math:`\theta_t`.

.. math::
    \begin{aligned}
    \hat\theta      &= \theta_t - \eta_t u_t
        && \text{learning step of the base optimizer} \\
    \theta_{t+1}    &= \hat\theta - \lambda_{i,t} (\hat\theta - a)
        && \text{review step} \\
    \lambda_{i,t}   &= \eta_t k_i \;\; (\textit{k\_unit}=\text{'absolute'}), \quad
                       \lambda_{i,t} = (\eta_t / \eta_{base}) k_i \;\;
                       (\textit{k\_unit}=\text{'base\_lr'}) \\
    k_i             &= k_{min} + (k_{max} - k_{min}) (1 - i/N)^{\gamma}
        && \text{(see :func:`~dualopt_mm.optim.levels.layer_level`)}
    \end{aligned}

with :math:`\eta_t` the group's current ``lr``, :math:`\eta_{base}` its ``base_lr``,
:math:`u_t` the base optimizer's direction, :math:`i` the tensor's layer index (``layer_id``)
out of ``num_layers`` (:math:`N` = ``num_layers - 1``) and the anchor :math:`a`:

- ``mode='finetune'`` (OLOR weight rollback): :math:`a = \theta_0`, the value of the tensor when
  it was first stepped (or when :meth:`DualOptOptimizer.capture_anchors` was called), kept in
  the per-parameter optimizer state ``'anchor'``;
- ``mode='scratch'`` (DualOpt real-time layer-wise weight decay): :math:`a = 0`;
- ``mode='none'``: no review, the plain torch step.

Algebraically the review step is decoupled weight decay toward :math:`a` with a rescaled learning
step: :math:`\theta_{t+1} = \theta_t - \eta_t (1 - \lambda) u_t - \lambda (\theta_t - a)`.
:math:`\lambda = 1` pins the tensor to :math:`a`; :math:`\lambda > 1` overshoots and is refused.

The review lives inside ``step()``: a step that is skipped (``torch.amp.GradScaler`` finding
inf/NaN gradients, mmengine's ``AmpOptimWrapper``) skips the review too.

Implementation: each optimizer has two functions of one signature that do the learning step
and then the review step: a per-tensor loop, the readable specification (torch's own
single-tensor operations, then :func:`review_tensor_`: ``lerp_`` toward :math:`a`, or ``mul_``
by :math:`1 - \lambda` for :math:`a = 0`), and a ``torch._foreach_*`` version over the tensors
of *all* param groups at once (mmengine makes one group per tensor), bucketed by device and
dtype and cut in chunks, ending with :func:`review_multi_tensor` (``_foreach_lerp_`` /
``_foreach_mul_``, the same operations). Both give identical results. No step synchronises
the host with the device: scalars are Python floats, step counts are CPU tensors, as in torch.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .levels import (
    anchor_dtype_name,
    check_layer,
    check_review_group,
    layer_level,
    reference_level,
    skips_1d,
)

__all__ = [
    'DualOptOptimizer',
    'apply_review',
    'review_multi_tensor',
    'review_single_tensor',
    'review_tensor_',
]

#: The DualOpt hyper-parameters shared by all three optimizers, with their defaults.
REVIEW_DEFAULTS: dict[str, Any] = dict(
    mode='finetune',
    k_max=0.01,
    k_min=0.0,
    gamma=1.0,
    k_unit='base_lr',
    reverse=False,
    skip_1d=None,
    layer_id=None,
    num_layers=None,
    base_lr=None,
    anchor_dtype=None,
)

# Group keys that decide which tensors are reviewed and their level k_i; a change of any of
# them (a scheduler driving k_max, say) re-resolves the levels at the next step.
_LEVEL_KEYS = ('mode', 'k_max', 'k_min', 'gamma', 'reverse', 'skip_1d', 'layer_id',
               'num_layers', 'reference', 'eps')

# Devices on which torch's own optimizers default to their foreach implementation.
_FOREACH_DEVICES = ('cuda', 'xpu', 'mtia')

# The foreach paths work through each (device, dtype) bucket in chunks of at most this many
# elements: on CPU a chunk's intermediates (Adam's denominator, ...) stay in cache, which makes
# the foreach path as fast as the loop; on accelerators a large chunk keeps the kernel launches
# few and bounds the transient memory (one chunk instead of the whole model).
_CHUNK_NUMEL_CPU = 1 << 16
_CHUNK_NUMEL_ACCELERATOR = 1 << 25

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


def bucket_chunks(tensors: Sequence[Tensor], extra_keys: Optional[Sequence[Hashable]] = None
                  ) -> list[tuple[tuple, list[int]]]:
    """Indices of ``tensors`` bucketed by (device, dtype[, extra key]), first-seen order, and
    cut into chunks of at most ``_CHUNK_NUMEL_*`` elements (a larger tensor is a chunk alone).

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
        limit = _chunk_numel(key[0])
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


def _chunk_numel(device: torch.device) -> int:
    return _CHUNK_NUMEL_CPU if device.type == 'cpu' else _CHUNK_NUMEL_ACCELERATOR


def _upcast_slices(param: Tensor, anchor: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(param, anchor) cut into flat slices of at most one chunk, so the upcast copy of a
    low-precision anchor stays small (no large temporary allocation per step)."""
    limit = _chunk_numel(param.device)
    if param.numel() <= limit or not (param.is_contiguous() and anchor.is_contiguous()):
        return [(param, anchor)]
    flat_param, flat_anchor = param.view(-1), anchor.view(-1)
    return [(flat_param[s:s + limit], flat_anchor[s:s + limit])
            for s in range(0, flat_param.numel(), limit)]


def review_tensor_(param: Tensor, anchor: Optional[Tensor], weight: float) -> None:
    r""":math:`\theta \leftarrow \theta - \lambda(\theta - a)` for one tensor, in place.

    ``anchor=None`` means :math:`a = 0` (scratch mode): ``mul_(1 - weight)``; otherwise
    ``lerp_(a, weight)``, with an anchor of another dtype (``anchor_dtype='bfloat16'``) upcast
    to the tensor's dtype a slice at a time. ``weight`` is :math:`\lambda \in [0, 1]`; 1 lands
    exactly on :math:`a`.
    """
    if anchor is None:
        param.mul_(1.0 - weight)
    elif anchor.dtype == param.dtype:
        param.lerp_(anchor, weight)
    else:
        for param_slice, anchor_slice in _upcast_slices(param, anchor):
            param_slice.lerp_(anchor_slice.to(param.dtype), weight)


def review_single_tensor(params: list[Tensor], anchors: list[Optional[Tensor]],
                         weights: list[float]) -> None:
    r"""Review step, one tensor at a time (the specification), skipping weights of 0.

    Args:
        params: the tensors :math:`\hat\theta` (already stepped), updated in place.
        anchors: :math:`a` per tensor; ``None`` means :math:`a = 0` (scratch mode).
        weights: :math:`\lambda` per tensor, in :math:`[0, 1]`.
    """
    for param, anchor, weight in zip(params, anchors, weights):
        if weight != 0.0:
            review_tensor_(param, anchor, weight)


def review_multi_tensor(params: list[Tensor], anchors: list[Optional[Tensor]],
                        weights: list[float]) -> None:
    """:func:`review_single_tensor` with ``torch._foreach_lerp_`` / ``torch._foreach_mul_``
    (the same operations), bucketed by device, dtype and anchor dtype."""
    active = [i for i, w in enumerate(weights) if w != 0.0]
    if not active:
        return
    params = [params[i] for i in active]
    anchors = [anchors[i] for i in active]
    weights = [weights[i] for i in active]
    kinds = [None if a is None else a.dtype for a in anchors]
    for (_, dtype, anchor_dtype), idx in bucket_chunks(params, kinds):
        chunk_params = [params[i] for i in idx]
        chunk_weights = [weights[i] for i in idx]
        if anchor_dtype is None:  # scratch: a = 0
            torch._foreach_mul_(chunk_params, [1.0 - w for w in chunk_weights])
        elif anchor_dtype == dtype:
            torch._foreach_lerp_(chunk_params, [anchors[i] for i in idx], chunk_weights)
        else:  # low-precision anchors: upcast at most one chunk of elements per call
            limit = _chunk_numel(chunk_params[0].device)
            batch: list[tuple[Tensor, Tensor, float]] = []
            numel = 0
            for i in idx:
                for param_slice, anchor_slice in _upcast_slices(params[i], anchors[i]):
                    if batch and numel + param_slice.numel() > limit:
                        _lerp_upcast(batch, dtype)
                        batch, numel = [], 0
                    batch.append((param_slice, anchor_slice, weights[i]))
                    numel += param_slice.numel()
            _lerp_upcast(batch, dtype)


def _lerp_upcast(batch: list[tuple[Tensor, Tensor, float]], dtype: torch.dtype) -> None:
    torch._foreach_lerp_([p for p, _, _ in batch], [a.to(dtype) for _, a, _ in batch],
                         [w for _, _, w in batch])


def apply_review(params: list[Tensor], anchors: list[Optional[Tensor]], weights: list[float],
                 *, foreach: Optional[bool] = None) -> None:
    """Public entry to the review step (e.g. for a hook reviewing another optimizer's step).

    ``foreach=None`` picks the foreach path when every tensor is on CUDA (as torch does).
    """
    if foreach is None:
        foreach = all(p.device.type in _FOREACH_DEVICES for p in params)
    (review_multi_tensor if foreach else review_single_tensor)(params, anchors, weights)


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
    :math:`k_i`, the review weights :math:`\lambda` and the review step (module docstring has the
    math); a subclass adds its base optimizer's state and update through four small methods
    (:meth:`_static_key`, :meth:`_new_batch`, :meth:`_collect`, :meth:`_update`).

    DualOpt hyper-parameters (all in ``defaults``, so every param group carries them and mmengine
    param schedulers can drive them; any of them can be set per group):

    - ``mode``: ``'finetune'`` (:math:`a = \theta_0`), ``'scratch'`` (:math:`a = 0`) or
      ``'none'`` (no review: the plain torch step, e.g. for a new head).
    - ``k_max`` / ``k_min``: :math:`k_{max}` / :math:`k_{min}`, levels of the shallowest /
      deepest reviewed tensor, :math:`0 \le k_{min} \le k_{max}`.
    - ``gamma``: :math:`\gamma > 0`, power of the depth ramp.
    - ``k_unit``: ``'base_lr'`` (default): :math:`k` is the fraction of :math:`\hat\theta - a`
      removed per step at the base lr, :math:`\lambda = (\eta_t/\eta_{base}) k_i`, so the same
      ``k_max`` gives the same strength whatever the lr; ``'absolute'``: the papers' :math:`k`,
      :math:`\lambda = \eta_t k_i` (reference setting ``k_max = 0.01 / lr``).
    - ``reverse``: flip the ramp (the deepest tensor gets ``k_max``).
    - ``skip_1d``: do not review tensors with ``ndim <= 1`` (biases, norms); ``None`` means
      ``True`` in scratch mode and ``False`` in finetune mode.
    - ``layer_id`` / ``num_layers``: the layer index :math:`i` of every tensor of the group and
      the number of layers (written by ``DualOptOptimWrapperConstructor``); ``num_layers=None``
      with a ``layer_id`` means ``1 + max(layer_id)`` over the groups. Without ``layer_id`` a
      tensor's index is its position among all reviewed tensors of the optimizer (group order,
      then tensor order; tensors with ``requires_grad=False``, in ``mode='none'`` groups or
      skipped by ``skip_1d`` are not counted). Either every reviewed group sets ``layer_id``
      or none does. The index is resolved at the first step and kept; it is resolved again
      after ``add_param_group``, ``load_state_dict`` or a change of a level hyper-parameter.
    - ``base_lr``: :math:`\eta_{base}`; ``None`` is resolved at the group's first step from
      ``initial_lr`` (set by mmengine / torch lr schedulers, after mmengine's
      ``auto_scale_lr``) or else ``lr``, and stored in the group (hence in the state_dict).
    - ``anchor_dtype``: dtype of the stored :math:`\theta_0`; ``None`` (the parameter's dtype)
      or ``'bfloat16'`` / ``'float16'`` / ``'float32'`` / ``'float64'`` (a ``torch.dtype`` is
      accepted and stored as its name). ``'bfloat16'`` halves the anchor memory of float32
      parameters at the cost of the anchor's precision: :math:`\theta_0` keeps 8 significant
      bits (rounding error up to :math:`2^{-8} \approx 0.4\%` of each weight), so the rollback
      pulls toward a slightly perturbed pretrained weight (:math:`\lambda = 1` lands on the
      rounded value).

    Per-parameter state: the base optimizer's (torch's names) plus ``'anchor'`` (finetune mode,
    reviewed tensors only), captured before the tensor's first update.
    """

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
        where = f' (param group {len(self.param_groups) - 1})'
        try:
            check_unsupported_flags(**{name: group.get(name) for name in
                                       ('capturable', 'differentiable', 'fused')})
            self._check_hyperparameters(group, where)
            check_review_group(group, where.strip(' ()'))
            group['anchor_dtype'] = anchor_dtype_name(group['anchor_dtype'])
            for p in group['params']:
                if torch.is_complex(p):
                    raise ValueError(f'complex parameters are not supported{where}')
        except ValueError:
            self.param_groups.pop()
            raise
        self._invalidate_levels()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._check_loaded_anchors(state['state'], state['param_groups'])
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
    def _check_loaded_anchors(state: dict[Any, Any], param_groups: list[dict[str, Any]]) -> None:
        for gi, group in enumerate(param_groups):
            for pi, p in enumerate(group['params']):
                p_state = state.get(p) if isinstance(p, Tensor) else None
                anchor = p_state.get('anchor') if p_state else None
                if anchor is None:
                    continue
                if not isinstance(anchor, Tensor) or anchor.shape != p.shape:
                    shape = tuple(anchor.shape) if isinstance(anchor, Tensor) else type(anchor)
                    raise ValueError(
                        f'loaded optimizer state has an anchor (theta_0) of shape {shape} for '
                        f'parameter {pi} of param group {gi}, whose shape is {tuple(p.shape)}: '
                        f'the checkpoint does not belong to this model')

    # ------------------------------------------------------------------ layer levels
    def _invalidate_levels(self) -> None:
        self._signatures: Optional[list[tuple]] = None
        self._levels: list[list[Optional[float]]] = []
        self._layer_ids: list[list[Optional[tuple[int, int]]]] = []
        self._max_levels: list[float] = []

    @staticmethod
    def _signature(group: dict[str, Any]) -> tuple:
        return (len(group['params']),) + tuple(group.get(k) for k in _LEVEL_KEYS)

    @staticmethod
    def _is_reviewed(p: Tensor, group: dict[str, Any], count_frozen: bool = False) -> bool:
        if group['mode'] == 'none' or not (p.requires_grad or count_frozen):
            return False
        return not skips_1d(group['skip_1d'], group['mode'], p.ndim)

    def _ensure_levels(self) -> None:
        signatures = [self._signature(g) for g in self.param_groups]
        if signatures != self._signatures:
            self._resolve_levels(signatures)

    def _resolve_levels(self, signatures: list[tuple]) -> None:
        groups = self.param_groups
        reviewed: list[list[bool]] = []
        for gi, group in enumerate(groups):
            check_review_group(group, f'param group {gi}')
            reference = group.get('reference', False)
            reviewed.append([self._is_reviewed(p, group, count_frozen=reference)
                             for p in group['params']])
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
        self._signatures = signatures

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
        dtype = _dtype(group['anchor_dtype']) or p.dtype
        return p.detach().to(dtype=dtype, copy=True, memory_format=torch.preserve_format)

    @torch.no_grad()
    def capture_anchors(self, params: Optional[Iterable[Tensor]] = None) -> int:
        r"""Store the current value of the reviewed finetune-mode tensors as :math:`\theta_0`.

        Overrides anchors captured before (lazily at a first step, or by an earlier call).
        ``WeightRollbackHook`` calls it at ``before_train``, after the pretrained weights are
        loaded, unless the run resumes (then the anchors come from the checkpoint).

        Args:
            params: restrict to these tensors (each must belong to the optimizer); ``None``:
                every reviewed tensor of every ``mode='finetune'`` group.

        Returns:
            The number of anchors captured.
        """
        self._ensure_levels()
        wanted = None
        if params is not None:
            wanted = {id(p) for p in params}
            known = {id(p) for g in self.param_groups for p in g['params']}
            if not wanted <= known:
                raise ValueError(f'capture_anchors: {len(wanted - known)} of the given tensors '
                                 f'are not parameters of this optimizer')
        count = 0
        for group, group_levels in zip(self.param_groups, self._levels):
            if group['mode'] != 'finetune':
                continue
            for p, level in zip(group['params'], group_levels):
                if level is None or (wanted is not None and id(p) not in wanted):
                    continue
                self.state[p]['anchor'] = self._new_anchor(p, group)
                count += 1
        return count

    # ------------------------------------------------------------------ the step
    def _review_scale(self, index: int, group: dict[str, Any]) -> float:
        r"""Return :math:`\lambda / k_i` for the group (resolving ``base_lr``); refuse
        :math:`\lambda > 1`."""
        lr = float(group['lr'])
        base_lr = group['base_lr']
        if base_lr is None:
            base_lr = group['base_lr'] = float(group.get('initial_lr', lr))
        max_level = self._max_levels[index]
        if max_level == 0.0:
            return 0.0
        if group['k_unit'] == 'absolute':
            scale = lr
        elif base_lr > 0:
            scale = lr / base_lr
        elif lr == 0:
            scale = 0.0
        else:
            raise ValueError(
                f"param group {index} has base_lr=0 but lr={lr!r} with k_unit='base_lr': set "
                f'base_lr to the peak lr of the schedule')
        if scale * max_level > 1.0:
            raise ValueError(
                f'review weight lambda = {scale * max_level:.6g} > 1 in param group {index} '
                f"(lr={lr!r}, k={max_level!r}, k_unit={group['k_unit']!r}, base_lr={base_lr!r})"
                f': lambda = lr * k (absolute) or lr / base_lr * k (base_lr) must be <= 1; '
                f'lower k_max')
        return scale

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
        batches: dict[tuple, ReviewBatch] = {}
        for gi, group in enumerate(self.param_groups):
            scale = self._review_scale(gi, group)
            self._start_group(group)
            key = (group['foreach'],) + self._static_key(group)
            batch = None
            finetune = group['mode'] == 'finetune'
            for p, level in zip(group['params'], self._levels[gi]):
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError('DualOpt optimizers do not support sparse gradients')
                if batch is None:
                    batch = batches.get(key)
                    if batch is None:
                        batch = batches[key] = self._new_batch(group)
                state = self.state[p]
                self._collect(batch, p, grad, state, group)
                if p.device.type not in _FOREACH_DEVICES:
                    batch.on_foreach_devices = False
                anchor, weight = None, 0.0
                if level is not None:
                    if finetune:
                        anchor = state.get('anchor')
                        if anchor is None:  # lazily, before the first update of the tensor
                            anchor = state['anchor'] = self._new_anchor(p, group)
                    weight = scale * level
                batch.anchors.append(anchor)
                batch.review_weights.append(weight)

        # learning step then review step, per batch of tensors that share hyper-parameters
        for (foreach, *_), batch in batches.items():
            self._update(batch, batch.on_foreach_devices if foreach is None else bool(foreach))
        return loss
