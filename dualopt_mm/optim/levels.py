r"""Review levels :math:`k_i` and the validation of the DualOpt hyper-parameters.

The level of the tensor with layer index :math:`i` out of ``num_layers`` is

.. math::
    k_i = k_{min} + (k_{max} - k_{min}) \, s_i^{\gamma}, \qquad
    s_i = 1 - i/N \;\; (\text{or } s_i = i/N \text{ with } \textit{reverse}), \qquad
    N = \text{num\_layers} - 1,

so the shallowest tensor (:math:`i = 0`) gets ``k_max`` and the deepest (:math:`i = N`) gets
``k_min`` (the other way round with ``reverse=True``). A single layer (:math:`N = 0`) is both
the shallowest and the deepest: it gets ``k_max`` in both directions.

Every check raises :class:`ValueError` naming the bad value and what is allowed (never
``assert``: those vanish under ``python -O``). This module needs only the standard library, so
the optimizer-wrapper constructor can import :func:`layer_level` to compute and log levels.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Optional

MODES = ('finetune', 'scratch', 'none')
K_UNITS = ('base_lr', 'absolute')
ANCHOR_DTYPES = ('bfloat16', 'float16', 'float32', 'float64')


def _where(where: str) -> str:
    return f' ({where})' if where else ''


def did_you_mean(value: Any, allowed: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the closest allowed string, or ``''``."""
    if not isinstance(value, str):
        return ''
    match = difflib.get_close_matches(value, [str(a) for a in allowed], n=1, cutoff=0.4)
    return f'; did you mean {match[0]!r}?' if match else ''


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
                         f'(anchor a = theta_0, a = 0, no review){did_you_mean(mode, MODES)}'
                         f'{_where(where)}')


def check_k_unit(k_unit: Any, where: str = '') -> None:
    if k_unit not in K_UNITS:
        raise ValueError(f'unknown k_unit {k_unit!r}: allowed are '
                         f'{", ".join(map(repr, K_UNITS))}{did_you_mean(k_unit, K_UNITS)}'
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
                         f'{did_you_mean(name, ANCHOR_DTYPES)}{_where(where)}')
    return name


def check_review_group(group: Mapping[str, Any], where: str = '') -> None:
    """Validate the DualOpt keys of one param group (the torch keys are checked elsewhere).

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


def skips_1d(skip_1d: Optional[bool], mode: str, ndim: int) -> bool:
    """Whether ``skip_1d`` exempts a tensor of ``ndim`` dimensions from review in ``mode``:
    ``skip_1d=None`` means True in scratch mode (biases and norms are not decayed), False
    otherwise."""
    if skip_1d is None:
        skip_1d = mode == 'scratch'
    return bool(skip_1d) and ndim <= 1


def layer_level(layer_id: int, num_layers: int, k_max: float = 0.01, k_min: float = 0.0,
                gamma: float = 1.0, reverse: bool = False) -> float:
    r"""Level :math:`k_i = k_{min} + (k_{max} - k_{min}) s_i^{\gamma}` of layer ``layer_id``.

    Args:
        layer_id: :math:`i`, the layer index, ``0`` (shallowest) to ``num_layers - 1``.
        num_layers: number of layers; :math:`N` = ``num_layers - 1``.
        k_max: :math:`k_{max}`, the level of the shallowest layer (deepest if ``reverse``).
        k_min: :math:`k_{min}`, the level of the deepest layer (shallowest if ``reverse``).
        gamma: :math:`\gamma > 0`, the power of the ramp (1: linear).
        reverse: use :math:`s_i = i/N` instead of :math:`1 - i/N`.

    Returns:
        The level, in the unit of ``k_max`` / ``k_min`` (see ``k_unit`` of the optimizers).

    Example:
        >>> [round(layer_level(i, 5, k_max=0.01), 6) for i in range(5)]
        [0.01, 0.0075, 0.005, 0.0025, 0.0]
    """
    check_layer(layer_id, num_layers)
    check_level_range(k_max, k_min, gamma)
    n = num_layers - 1
    if n == 0:
        ramp = 1.0
    else:
        depth = layer_id / n
        ramp = depth if reverse else 1.0 - depth
    return k_min + (k_max - k_min) * ramp**gamma


def reference_level(index: int, num_tensors: int, k_max: float, k_min: float, gamma: float,
                    eps: float, where: str = '') -> float:
    r"""The level of the authors' AdamB: :math:`k_{min} + (1 - (i/N + \epsilon))^{\gamma}
    (k_{max} - k_{min})`, with :math:`i` the position of the tensor in its param group,
    :math:`N` = ``num_tensors - 1`` and :math:`\epsilon` Adam's ``eps``.

    Source: rainbow-xiao/OLOR-AAAI-2024, ``OLOR/utils/AdamB.py`` (``back_level``). The
    :math:`\epsilon` inside the base gives the last tensor a slightly negative level, a
    non-integer :math:`\gamma` would make that level complex, and a group of one tensor divides
    by zero; the last two are refused here with a ValueError.
    """
    if num_tensors < 2:
        raise ValueError(
            f'reference=True indexes tensors by their position in the param group like the '
            f"authors' AdamB, whose level divides by zero for a group of {num_tensors} "
            f'tensor(s){_where(where)}; with one param group per tensor (mmengine with '
            f'paramwise_cfg) use reference=False (global layer index)')
    base = 1.0 - (index / (num_tensors - 1) + eps)
    ramp = base**gamma
    if isinstance(ramp, complex):
        raise ValueError(
            f'reference=True with a non-integer gamma={gamma!r} gives the last tensor the '
            f'complex level (1 - (1 + eps))**gamma (the reference puts eps inside the base)'
            f'{_where(where)}; use an integer gamma or reference=False')
    return k_min + ramp * (k_max - k_min)
