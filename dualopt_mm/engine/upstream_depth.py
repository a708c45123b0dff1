"""Depth orders that backbones define themselves, read by the block index (``layer_index.py``).

Two libraries define the shallow-to-deep order of a backbone's parameters, for their own
layer-wise lr decay, and the block index takes it wherever it exists:

``timm group_matcher``
    every timm model's ``group_matcher(coarse=False)``, turned into ordered groups by
    ``timm.models.group_parameters`` (what ``timm.optim.param_groups_layer_decay`` reads).
    Parameters no pattern matches (a classifier) go to the deepest group, as in timm.
``mmpretrain get_layer_depth``
    a backbone's ``get_layer_depth(param_name, prefix) -> (depth, num_layers)`` (what
    mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` reads).

:func:`find_upstream_orders` walks the model from the root down: the outermost module that
defines either claims every parameter under it. So mmpretrain's ``TIMMBackbone`` (which
defines nothing) leaves its ``timm_model`` to claim, the ``ImageClassifier`` wrapper (whose
``get_layer_depth`` takes no prefix) leaves its backbone, and the CNN inside a timm hybrid is
part of the outer model's stem, as timm orders it.

A definition is not used (the hand rules apply, and the reason is reported) when it raises
``NotImplementedError`` (mmpretrain's ResNet for the depths it has no table for, e.g. 18/34),
when the module's parameters use fewer than half the depths it declares (mmpretrain 1.2's HiViT
matches ``layers.{i}`` but its blocks are ``blocks.{i}``: 2 of 18; its ResNet mounted elsewhere
than ``backbone.``, since it tests ``'backbone.layer'`` whatever the prefix: 1 of 8), or when it
puts every tensor of a module with several layers at one depth.

timm is imported only when a module has a ``group_matcher`` (timm is optional).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn

from .strategies.fsdp import clean_name

__all__ = ['MMPRETRAIN_SOURCE', 'TIMM_SOURCE', 'UpstreamOrder', 'UpstreamOrders',
           'block_names', 'find_upstream_orders']

TIMM_SOURCE = 'timm group_matcher'
MMPRETRAIN_SOURCE = 'mmpretrain get_layer_depth'


@dataclass(frozen=True)
class UpstreamOrder:
    """The depth of the parameters under one module, as that module defines it.

    Args:
        root: the module's name prefix (``'backbone.timm_model.'``; ``''`` for the model).
        source: :data:`TIMM_SOURCE` or :data:`MMPRETRAIN_SOURCE`.
        depth: full parameter name -> upstream depth (smaller is shallower), for the given
            names under ``root``.
    """

    root: str
    source: str
    depth: Mapping[str, float]


@dataclass
class UpstreamOrders:
    """What :func:`find_upstream_orders` found: the orders, and the definitions not used."""

    orders: list[UpstreamOrder] = field(default_factory=list)
    #: ``'<module>: <why>'`` per definition that was found but not used
    refused: list[str] = field(default_factory=list)


#: ``(full name -> depth for every parameter of the module, number of depths it declares)``
_Depths = tuple[dict[str, float], int]


def _timm_depths(module: nn.Module, prefix: str) -> Optional[_Depths]:
    """timm's group of every parameter of ``module`` (timm declares no count: 0), or None
    when it has no ``group_matcher``."""
    group_matcher = getattr(module, 'group_matcher', None)
    if not callable(group_matcher):
        return None
    try:
        from timm.models import group_parameters
    except ImportError:  # a group_matcher outside timm, without timm installed
        return None
    groups = group_parameters(module, group_matcher(coarse=False), reverse=True)
    return {clean_name(prefix + n): float(g) for n, g in groups.items()}, 0


def _mmpretrain_depths(module: nn.Module, prefix: str) -> Optional[_Depths]:
    """``get_layer_depth(name, prefix)`` of every parameter of ``module``, or None when it
    has no ``get_layer_depth(param_name, prefix)`` (mmpretrain's classifiers take no
    prefix)."""
    get_layer_depth = getattr(module, 'get_layer_depth', None)
    if not callable(get_layer_depth):
        return None
    names = [clean_name(prefix + n) for n, _ in module.named_parameters()]
    try:
        declared = get_layer_depth(names[0], prefix)[1]
    except TypeError:  # another signature: not a backbone's definition
        return None
    return {name: float(get_layer_depth(name, prefix)[0]) for name in names}, int(declared)


def _refusal(depth: Mapping[str, float], declared: int) -> Optional[str]:
    """Why a definition does not describe the module's parameters, or None."""
    used = len(set(depth.values()))
    if declared and used < declared / 2:
        return f'its parameters use {used} of the {declared} depths it declares'
    if used == 1 and len({n.rpartition('.')[0] for n in depth}) > 1:
        return f'it puts all {len(depth)} tensors at one depth'
    return None


_READERS = ((TIMM_SOURCE, _timm_depths), (MMPRETRAIN_SOURCE, _mmpretrain_depths))


def find_upstream_orders(model: nn.Module, names: Sequence[str]) -> UpstreamOrders:
    """The upstream depth orders of the modules of ``model`` that define one.

    Args:
        model: the model ``names`` belong to (model wrappers already removed).
        names: the parameter names to index (FSDP's wrapper components removed).

    Returns:
        the orders, outermost module first, with disjoint roots (each holds the depth of the
        given names under its root), and the definitions found but not used, with the reason
        (``'backbone: mmpretrain get_layer_depth raised NotImplementedError'``).
    """
    found = UpstreamOrders()
    for module_name, module in model.named_modules():
        if not (callable(getattr(module, 'group_matcher', None))
                or callable(getattr(module, 'get_layer_depth', None))):
            continue
        prefix = clean_name(module_name + '.') if module_name else ''
        if any(prefix.startswith(order.root) for order in found.orders):
            continue
        under = [n for n in names if n.startswith(prefix)]
        if not under or not any(True for _ in module.parameters()):
            continue
        where = clean_name(module_name) or type(module).__name__
        for source, read in _READERS:
            try:
                result = read(module, prefix)
            except NotImplementedError:  # mmpretrain's ResNet without a table for its depths
                found.refused.append(f'{where}: {source} raised NotImplementedError')
                break
            if result is None:
                continue
            why = _refusal(*result)
            if why is not None:
                found.refused.append(f'{where}: {source} not used: {why}')
                break
            depth = {n: result[0][n] for n in under if n in result[0]}
            found.orders.append(UpstreamOrder(prefix, source, depth))
            break
    return found


def _common_module(names: Sequence[str]) -> str:
    """The deepest module that owns every name (``''`` when only the root does)."""
    owners = [n.rpartition('.')[0].split('.') for n in names]
    common = []
    for parts in zip(*owners):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return '.'.join(common)


def block_names(order: UpstreamOrder) -> dict[str, str]:
    """The block of every name of ``order``, one per upstream depth: the module that holds
    exactly the tensors of that depth (``backbone.timm_model.layer1.0``), else
    ``<root>depth<d>`` (ViT's stem of tokens and patch embedding, a ConvNeXt stage's
    downsampling with its first block)."""
    by_depth: dict[float, list[str]] = {}
    for name, depth in order.depth.items():
        by_depth.setdefault(depth, []).append(name)
    out = {}
    for depth, members in by_depth.items():
        module = _common_module([n[len(order.root):] for n in members])
        full = order.root + module + '.'
        if module and sum(n.startswith(full) for n in order.depth) == len(members):
            block = order.root + module
        else:
            block = f'{order.root}depth{depth:g}'
        out.update(dict.fromkeys(members, block))
    return out
