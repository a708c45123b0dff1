r"""The review hyper-parameters: names, defaults, meaning and validation, defined once.

The optimizers take them as keyword arguments and store them in ``defaults`` (so every param
group carries them and mmengine param schedulers can drive them);
``DualOptOptimWrapperConstructor`` (``paramwise_cfg.dualopt``, ``custom_keys``) and
``WeightRollbackHook`` take the same names. The rule they parameterise is in
:mod:`dualopt_mm.optim`.

Their meaning (names and defaults: :data:`REVIEW_DEFAULTS`):

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

Every check raises :class:`ValueError` naming the bad value, what is allowed and, for a
misspelt name or value, the close match (never ``assert``: it vanishes under ``python -O``).
This module needs only the standard library.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Optional

MODES = ('finetune', 'scratch', 'none')
K_UNITS = ('base_lr', 'absolute')
ANCHOR_DTYPES = ('bfloat16', 'float16', 'float32', 'float64')


#: The review hyper-parameters and their defaults (the module docstring says what each means).
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


def _where(where: str) -> str:
    return f' ({where})' if where else ''


def close_matches(word: Any, candidates: Iterable[Any], cutoff: float = 0.75) -> list[str]:
    """The candidates (at most 3) close to ``word`` (``difflib``); none for a non-string."""
    if not isinstance(word, str):
        return []
    return difflib.get_close_matches(word, [str(c) for c in candidates], n=3, cutoff=cutoff)


def did_you_mean(word: Any, candidates: Iterable[Any], cutoff: float = 0.75) -> str:
    """``" (did you mean 'x'?)"`` for the close candidates of a misspelt name, or ``''``."""
    matches = close_matches(word, candidates, cutoff)
    return f' (did you mean {" or ".join(map(repr, matches))}?)' if matches else ''


def check_unknown_keys(keys: Iterable[str], known: Iterable[str], where: str = '') -> None:
    """Refuse keys that are not ``known`` but close to a known name (``k_maxx``, ``gama``):
    such a typo would otherwise be carried along silently and change nothing. Keys far from
    every known name (``initial_lr``, ``param_name``, ``lr_mult``) are someone else's."""
    known = list(known)
    for key in keys:
        if key in known or not isinstance(key, str):
            continue
        match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if match:
            raise ValueError(f'unknown key {key!r}: did you mean {match[0]!r}? (a misspelt '
                             f'key would be ignored){_where(where)}')


def review_kwargs(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The review hyper-parameters of an optimizer's ``**kwargs``: defaults filled in, and an
    unknown name refused with its close match (like a misspelt keyword argument)."""
    unknown = [k for k in kwargs if k not in REVIEW_DEFAULTS]
    if unknown:
        key = unknown[0]
        raise TypeError(f'{where} got an unexpected keyword argument {key!r}'
                        f'{did_you_mean(key, REVIEW_DEFAULTS, cutoff=0.6)}')
    return {**REVIEW_DEFAULTS, **kwargs}


def check_number(name: str, value: Any, where: str = '') -> float:
    """Return ``value`` as a float; refuse bools, non-numbers and non-finite numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{name} must be a real number, got {value!r}{_where(where)}')
    if not math.isfinite(value):
        raise ValueError(f'{name} must be finite, got {value!r}{_where(where)}')
    return float(value)


def check_level_range(k_max: Any, k_min: Any, gamma: Any, where: str = '') -> None:
    """Validate the ramp parameters: ``0 <= k_min <= k_max`` and ``gamma > 0``."""
    k_max = check_number('k_max', k_max, where)
    k_min = check_number('k_min', k_min, where)
    gamma = check_number('gamma', gamma, where)
    if k_min < 0:
        raise ValueError(
            f'k_min={k_min!r} is negative: levels must be >= 0 (a negative level pushes '
            f'the weights away from the anchor){_where(where)}')
    if k_max < k_min:
        raise ValueError(
            f'k_min={k_min!r} > k_max={k_max!r}: k_max is the level of the shallowest '
            f'tensor and must be >= k_min (use reverse=True to flip the ramp){_where(where)}')
    if gamma <= 0:
        raise ValueError(f'gamma={gamma!r} must be > 0 (the power of the depth ramp)'
                         f'{_where(where)}')


def check_layer(layer_id: Any, num_layers: Any, where: str = '') -> None:
    """Validate a layer index: integers with ``0 <= layer_id <= num_layers - 1``."""
    for name, value in (('layer_id', layer_id), ('num_layers', num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'{name} must be an int, got {value!r}{_where(where)}')
    if num_layers < 1:
        raise ValueError(f'num_layers={num_layers!r} must be >= 1{_where(where)}')
    if not 0 <= layer_id < num_layers:
        raise ValueError(f'layer_id={layer_id!r} must be in [0, num_layers - 1] = '
                         f'[0, {num_layers - 1}]{_where(where)}')


def check_mode(mode: Any, where: str = '') -> None:
    if mode not in MODES:
        raise ValueError(f'unknown mode {mode!r}: allowed are {", ".join(map(repr, MODES))} '
                         f'(anchor a = theta_0, a = 0, no review){did_you_mean(mode, MODES, 0.4)}'
                         f'{_where(where)}')


def check_k_unit(k_unit: Any, where: str = '') -> None:
    if k_unit not in K_UNITS:
        raise ValueError(f'unknown k_unit {k_unit!r}: allowed are '
                         f'{", ".join(map(repr, K_UNITS))}{did_you_mean(k_unit, K_UNITS, 0.4)}'
                         f'{_where(where)}')


def anchor_dtype_name(anchor_dtype: Any, where: str = '') -> Optional[str]:
    """Normalise ``anchor_dtype`` (None, a name or a ``torch.dtype``) to None or a name.

    The name (a plain string) is what the param group stores, so the optimizer state_dict
    loads with ``torch.load(weights_only=True)``.
    """
    if anchor_dtype is None:
        return None
    name = str(anchor_dtype)
    if name.startswith('torch.'):
        name = name[len('torch.'):]
    if name not in ANCHOR_DTYPES:
        raise ValueError(f'anchor_dtype={anchor_dtype!r} is not allowed: use None (the '
                         f'parameter dtype) or one of {", ".join(ANCHOR_DTYPES)}'
                         f'{did_you_mean(name, ANCHOR_DTYPES, 0.4)}{_where(where)}')
    return name


def check_review_group(group: Mapping[str, Any], where: str = '') -> None:
    """Validate the review keys of one param group (the torch keys are checked elsewhere).

    Also refuses ``k_max > 1`` for ``k_unit='base_lr'`` and ``lr * k_max > 1`` for
    ``k_unit='absolute'``: the review weight at the group's current lr would exceed 1.
    """
    check_mode(group['mode'], where)
    check_k_unit(group['k_unit'], where)
    check_level_range(group['k_max'], group['k_min'], group['gamma'], where)
    for name in ('reverse', 'reference'):
        if name in group and not isinstance(group[name], bool):
            raise ValueError(f'{name} must be a bool, got {group[name]!r}{_where(where)}')
    if group['skip_1d'] is not None and not isinstance(group['skip_1d'], bool):
        raise ValueError(f'skip_1d must be None or a bool, got {group["skip_1d"]!r}'
                         f'{_where(where)}')
    layer_id, num_layers = group['layer_id'], group['num_layers']
    if layer_id is not None:
        check_layer(layer_id, num_layers if num_layers is not None else
                    (layer_id if isinstance(layer_id, int) and layer_id > 0 else 0) + 1, where)
    elif num_layers is not None:
        check_layer(0, num_layers, where)
    if group['base_lr'] is not None and check_number('base_lr', group['base_lr'], where) < 0:
        raise ValueError(f'base_lr={group["base_lr"]!r} must be >= 0{_where(where)}')
    anchor_dtype_name(group['anchor_dtype'], where)
    if group['mode'] == 'none':
        return
    k_max = float(group['k_max'])
    if group['k_unit'] == 'base_lr' and k_max > 1:
        raise ValueError(
            f"k_max={k_max!r} > 1 with k_unit='base_lr': k is the fraction of the "
            f'displacement removed per step at the base lr and must be <= 1{_where(where)}')
    lr = group.get('lr')
    if group['k_unit'] == 'absolute' and isinstance(lr, (int, float)) and lr * k_max > 1:
        raise ValueError(
            f"review weight lambda = lr * k_max = {lr * k_max:.6g} > 1 (lr={lr!r}, "
            f"k_max={k_max!r}, k_unit='absolute'): lambda <= 1 is required; the reference "
            f'setting is k_max = 0.01 / lr{_where(where)}')
