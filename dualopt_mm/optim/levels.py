r"""Review levels :math:`k_i`, the review weight :math:`\lambda` and who is exempt: the three
functions every part of the package (optimizers, constructor, hook, reports) computes them with.

The formulas are those of :mod:`dualopt_mm.optim`. This module needs only the standard library.
"""
from __future__ import annotations

from typing import Optional

from .hyperparams import _where, check_layer, check_level_range

__all__ = ['layer_level', 'reference_level', 'review_scale', 'review_weight', 'skips_1d']


def review_scale(lr: float, base_lr: Optional[float], k_unit: str, where: str = '') -> float:
    r""":math:`\lambda / k_i`: ``lr`` (``k_unit='absolute'``, the papers' :math:`\eta_t k_i`)
    or ``lr / base_lr`` (``k_unit='base_lr'``: ``k_i`` is the fraction removed per step at
    the base lr). ``base_lr=0`` with ``lr > 0`` is refused."""
    lr = float(lr)
    if k_unit == 'absolute':
        return lr
    if base_lr:
        return lr / float(base_lr)
    if lr == 0:
        return 0.0
    raise ValueError(f"{where + ' has ' if where else ''}base_lr={base_lr:g} but lr={lr!r} "
                     f"with k_unit='base_lr': set base_lr to the peak lr of the schedule")


def review_weight(level: float, lr: float, base_lr: Optional[float], k_unit: str,
                  where: str = '') -> float:
    r""":math:`\lambda = k_i \cdot` :func:`review_scale`; refused above 1 (the weights would
    overshoot the anchor), naming where and the way out."""
    weight = level * review_scale(lr, base_lr, k_unit, where)
    if weight > 1.0:
        raise ValueError(
            f'review weight lambda = {weight:.6g} > 1{" in " + where if where else ""} '
            f'(lr={lr!r}, k={level!r}, k_unit={k_unit!r}, base_lr={base_lr!r}): lambda = '
            f'lr * k (absolute) or lr / base_lr * k (base_lr) must be <= 1; lower k_max, or '
            f'pass base_lr=<the peak lr> if the lr rises above the first one (warm-up)')
    return weight


def skips_1d(skip_1d: Optional[bool], mode: str, ndim: int) -> bool:
    """Whether ``skip_1d`` exempts a tensor of ``ndim`` dimensions from review in ``mode``:
    ``skip_1d=None`` means True in scratch mode (biases and norms are not decayed), False
    otherwise."""
    if skip_1d is None:
        skip_1d = mode == 'scratch'
    return bool(skip_1d) and ndim <= 1


def layer_level(layer_id: int, num_layers: int, k_max: float = 0.01, k_min: float = 0.0,
                gamma: float = 1.0, reverse: bool = False) -> float:
    r"""The level :math:`k_i` of layer ``layer_id`` (formula in :mod:`dualopt_mm.optim`).

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
