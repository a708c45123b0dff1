"""The constructor a config names for its lr / weight-decay groups, and how DualOpt keeps it.

``DualOptOptimWrapperConstructor`` composes with the constructor that builds a config's
param groups (its *base constructor*): the base decides every tensor's lr and weight decay,
bit for bit as without DualOpt, and DualOpt adds its review keys on top. The default base is
mmengine's ``DefaultOptimWrapperConstructor``. A layer-wise lr decay config names another one
(mmseg / mmdet ``LearningRateDecayOptimizerConstructor``, mmseg's deprecated
``LayerDecayOptimizerConstructor``, mmpretrain ``LearningRateDecayOptimWrapperConstructor``);
the one-line switch ``optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')``
overwrites that name when configs merge, so the base is recognised from the layer-decay keys
left in ``paramwise_cfg`` (:func:`infer_base_constructor`), or named explicitly with
``paramwise_cfg.dualopt.base_constructor``. A ``paramwise_cfg`` key that neither mmengine nor a
known layer-decay constructor reads is refused, naming the close match and the line to add.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch.nn as nn
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope

from ..optim.hyperparams import did_you_mean

#: ``paramwise_cfg`` keys of mmengine's ``DefaultOptimWrapperConstructor``.
DEFAULT_PARAMWISE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult',
                          'dwconv_decay_mult', 'flat_decay_mult', 'dcn_offset_lr_mult',
                          'bypass_duplicate')

DEFAULT_CONSTRUCTOR = 'DefaultOptimWrapperConstructor'

#: The constructors shipped upstream besides mmengine's (the layer-wise lr decay ones and mmseg's
#: ForceDefault): (name, scopes that register it under that name, the paramwise_cfg keys it
#: reads beyond mmengine's).
LAYER_DECAY_CONSTRUCTORS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ('LearningRateDecayOptimizerConstructor', ('mmseg', 'mmdet'),
     ('decay_rate', 'decay_type', 'num_layers')),
    ('LayerDecayOptimizerConstructor', ('mmseg',), ('layer_decay_rate', 'num_layers')),
    ('LearningRateDecayOptimWrapperConstructor', ('mmpretrain',), ('layer_decay_rate',)),
    ('ForceDefaultOptimWrapperConstructor', ('mmseg',), ('force_default_settings',)),
)

#: Every paramwise_cfg key some known constructor reads (for typo suggestions).
KNOWN_PARAMWISE_KEYS = tuple(sorted(set(DEFAULT_PARAMWISE_KEYS).union(
    *(keys for _, _, keys in LAYER_DECAY_CONSTRUCTORS))))


def infer_base_constructor(paramwise_cfg: dict) -> Optional[str]:
    """The base constructor the keys of ``paramwise_cfg`` belong to (``scope.Name``), or None
    for mmengine's default one.

    ``decay_rate`` / ``decay_type``: ``LearningRateDecayOptimizerConstructor`` of the current
    default scope (``mmdet`` or ``mmseg``; mmseg's, which also knows BEiT and MAE, elsewhere);
    ``layer_decay_rate`` with ``num_layers``: mmseg's ``LayerDecayOptimizerConstructor``;
    ``layer_decay_rate`` alone: mmpretrain's ``LearningRateDecayOptimWrapperConstructor``;
    ``force_default_settings``: mmseg's ``ForceDefaultOptimWrapperConstructor`` (VPD).

    Raises:
        ValueError: a key no known constructor reads (a typo, or the key of a constructor this
            function does not know), naming the close match and ``base_constructor``.
    """
    keys = set(paramwise_cfg) - set(DEFAULT_PARAMWISE_KEYS) - {'dualopt'}
    if not keys:
        return None
    chosen: Optional[str] = None
    if keys & {'decay_rate', 'decay_type'}:
        scope = DefaultScope.get_current_instance()
        scope_name = scope.scope_name if scope is not None else None
        chosen = f'{scope_name if scope_name in ("mmdet", "mmseg") else "mmseg"}.' \
                 'LearningRateDecayOptimizerConstructor'
    elif 'layer_decay_rate' in keys and 'num_layers' in keys:
        chosen = 'mmseg.LayerDecayOptimizerConstructor'
    elif 'layer_decay_rate' in keys:
        chosen = 'mmpretrain.LearningRateDecayOptimWrapperConstructor'
    elif 'force_default_settings' in keys:
        chosen = 'mmseg.ForceDefaultOptimWrapperConstructor'
    allowed = set(DEFAULT_PARAMWISE_KEYS) | {'dualopt'}
    if chosen is not None:
        name = chosen.split('.', 1)[1]
        allowed |= next(set(k) for n, _, k in LAYER_DECAY_CONSTRUCTORS if n == name)
    unknown = sorted(set(paramwise_cfg) - allowed)
    if unknown:
        hints = '; '.join(f'{key!r}{did_you_mean(key, KNOWN_PARAMWISE_KEYS)}'
                          for key in unknown)
        raise ValueError(
            f'paramwise_cfg has keys that DualOptOptimWrapperConstructor cannot place: {hints}. '
            f'mmengine reads {", ".join(DEFAULT_PARAMWISE_KEYS)}'
            + (f' and {chosen} reads {", ".join(sorted(allowed - set(DEFAULT_PARAMWISE_KEYS) - {"dualopt"}))}'  # noqa: E501
               if chosen else '')
            + '. If they belong to the constructor your config named before the switch, add '
            "paramwise_cfg=dict(dualopt=dict(base_constructor='<its registered name>')) "
            'so that constructor builds the lr / weight-decay groups')
    return chosen


def resolve_constructor(name: str) -> type:
    """The class registered as ``name`` (``'scope.Name'`` or ``'Name'``) in
    ``OPTIM_WRAPPER_CONSTRUCTORS``, importing ``scope.engine`` first so it is registered."""
    scope, _, short = name.rpartition('.')
    if scope:
        try:
            importlib.import_module(f'{scope}.engine')
        except ImportError as error:
            raise ValueError(f'base constructor {name!r} needs the package {scope!r}, which '
                             f'cannot be imported ({error})') from error
    cls = OPTIM_WRAPPER_CONSTRUCTORS.get(name)
    if cls is None and not scope:
        current = DefaultScope.get_current_instance()
        if current is not None:
            cls = OPTIM_WRAPPER_CONSTRUCTORS.get(f'{current.scope_name}.{short}')
    if cls is None:
        raise ValueError(f'base constructor {name!r} is not registered in '
                         'OPTIM_WRAPPER_CONSTRUCTORS (write it as scope.Name, e.g. '
                         "'mmseg.LearningRateDecayOptimizerConstructor', and import its package)")
    return cls


def split_groups(groups: list[dict], model: nn.Module) -> list[dict]:
    """One group per tensor, in the model's parameter order, every other key kept.

    A base constructor may put many tensors in one group (mmseg's layer decay: one group per
    (layer, decay) pair, with torch's ``param_names`` list); the split keeps each tensor's lr,
    weight decay and every other key as they were. ``layer_id`` of mmpretrain's constructor
    (its lr-decay depth) is kept as ``lr_decay_layer_id``: ``layer_id`` is DualOpt's index.
    """
    order: dict[int, int] = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    split = []
    for group in groups:
        for param in group['params']:
            new = {k: v for k, v in group.items() if k not in ('params', 'param_names')}
            if 'layer_id' in new:
                new['lr_decay_layer_id'] = new.pop('layer_id')
            new['params'] = [param]
            split.append(new)
    split.sort(key=lambda g: order.get(id(g['params'][0]), len(order)))
    return split
