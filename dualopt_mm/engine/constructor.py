"""``DualOptOptimWrapperConstructor``: mmengine param groups for DualOpt / OLOR.

The constructor decides, for every trainable tensor of the model, whether it is reviewed
(rolled back toward its pretrained value, or decayed toward 0 from scratch) and its global
layer index, and writes that into the tensor's param group. The optimizers only read
per-group scalars (docs/design.md).
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

from ..optim.levels import anchor_dtype_name, check_k_unit, check_level_range, check_mode
from .layer_index import (
    DEFAULT_RULES,
    LAYER_INDEX_STRATEGIES,
    GetLayerIndex,
    assign_blocks,
    dense_layer_ids,
)
from .report import REVIEW_DEFAULTS, format_table, level_rows

#: ``paramwise_cfg['dualopt']`` keys forwarded to the optimizer (its ``defaults``).
OPTIMIZER_KEYS = ('k_max', 'k_min', 'gamma', 'k_unit', 'reverse', 'skip_1d', 'anchor_dtype')

PRETRAINED_RULES = ('auto', 'backbone', 'all')

#: The torch optimizers the constructor replaces by their DualOpt counterpart.
SWAPS = {'SGD': 'DualOptSGD', 'Adam': 'DualOptAdam', 'AdamW': 'DualOptAdamW'}


@dataclass
class DualOptOptions:
    """The options of ``paramwise_cfg['dualopt']`` (all optional).

    Args:
        mode: None (the optimizer's ``mode`` kwarg if given, else ``'finetune'``),
            ``'finetune'`` (OLOR weight rollback toward the pretrained weights θ_0 of the
            pretrained tensors; the others get the plain optimizer step), ``'scratch'``
            (DualOpt real-time layer-wise weight decay toward 0 of every trainable tensor) or
            ``'none'`` (no review anywhere: the plain optimizer, a control run).
        pretrained: which tensors count as pretrained in finetune mode.
            ``'auto'``: at build time the tensors of modules whose ``init_cfg`` is
            ``Pretrained`` (else ``backbone.*``, else all); :class:`WeightRollbackHook` then
            refines this at ``before_train`` to the tensors a checkpoint really filled
            (``load_from`` and every ``Pretrained`` init_cfg, name and shape). ``'backbone'``:
            ``backbone.*``. ``'all'``: every trainable tensor. A list of name prefixes (e.g.
            ``['backbone.', 'neck.']``): the tensors whose name starts with one of them.
            ``custom_keys`` entries with a ``mode`` key override all of these.
        layer_index: ``'block'`` (architecture-aware, :mod:`dualopt_mm.engine.layer_index`)
            or ``'tensor'`` (tensor order, like the authors' reference code).
        get_layer_index: optional ``name -> (block, depth) | None`` callable consulted before
            the built-in rules of ``layer_index='block'``.
        swap_optimizer: replace a torch ``SGD`` / ``Adam`` / ``AdamW`` by ``DualOptSGD`` /
            ``DualOptAdam`` / ``DualOptAdamW`` (same kwargs), so a stock config is converted
            by naming this constructor. With False (or an optimizer that has no DualOpt
            counterpart), add ``WeightRollbackHook(review=True)`` to get the review step.
        k_max, k_min, gamma, k_unit, reverse, skip_1d, anchor_dtype: the optimizer's review
            hyper-parameters (docs/design.md); None keeps the optimizer's own default. They
            may equally be given in ``optimizer=dict(...)``; giving both different values is
            an error.
    """

    mode: Optional[str] = None
    pretrained: Union[str, Sequence[str]] = 'auto'
    layer_index: str = 'block'
    get_layer_index: Optional[GetLayerIndex] = None
    swap_optimizer: bool = True
    k_max: Optional[float] = None
    k_min: Optional[float] = None
    gamma: Optional[float] = None
    k_unit: Optional[str] = None
    reverse: Optional[bool] = None
    skip_1d: Optional[bool] = None
    anchor_dtype: Optional[str] = None

    @classmethod
    def from_cfg(cls, cfg: Optional[dict]) -> DualOptOptions:
        """Build from ``paramwise_cfg['dualopt']``; ValueError on an unknown key or value."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'unknown paramwise_cfg.dualopt keys {unknown}: allowed are '
                             f'{sorted(known)}')
        options = cls(**cfg)
        options.validate()
        return options

    def validate(self) -> None:
        """Refuse bad values, naming them and what is allowed."""
        if self.mode is not None:
            check_mode(self.mode, 'paramwise_cfg.dualopt.mode')
        if isinstance(self.pretrained, str):
            if self.pretrained not in PRETRAINED_RULES:
                raise ValueError(
                    f'unknown paramwise_cfg.dualopt.pretrained {self.pretrained!r}: allowed '
                    f'are {", ".join(map(repr, PRETRAINED_RULES))} or a list of name prefixes')
        elif not (isinstance(self.pretrained, Sequence)
                  and all(isinstance(p, str) for p in self.pretrained)):
            raise ValueError(f'paramwise_cfg.dualopt.pretrained={self.pretrained!r}: expected '
                             f'one of {PRETRAINED_RULES} or a list of name prefixes')
        if self.layer_index not in LAYER_INDEX_STRATEGIES:
            raise ValueError(
                f'unknown paramwise_cfg.dualopt.layer_index {self.layer_index!r}: allowed are '
                f'{", ".join(map(repr, LAYER_INDEX_STRATEGIES))} (a custom rule goes in '
                'get_layer_index)')
        if self.get_layer_index is not None and not callable(self.get_layer_index):
            raise ValueError(f'paramwise_cfg.dualopt.get_layer_index={self.get_layer_index!r}'
                             ' must be a callable name -> (block, depth) or None')
        if not isinstance(self.swap_optimizer, bool):
            raise ValueError(f'paramwise_cfg.dualopt.swap_optimizer={self.swap_optimizer!r} '
                             'must be a bool')
        check_level_range(*(REVIEW_DEFAULTS[k] if getattr(self, k) is None else getattr(self, k)
                            for k in ('k_max', 'k_min', 'gamma')), 'paramwise_cfg.dualopt')
        if self.k_unit is not None:
            check_k_unit(self.k_unit, 'paramwise_cfg.dualopt.k_unit')
        for name in ('reverse', 'skip_1d'):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f'paramwise_cfg.dualopt.{name}={value!r} must be None or a '
                                 'bool')
        anchor_dtype_name(self.anchor_dtype, 'paramwise_cfg.dualopt.anchor_dtype')

    def optimizer_kwargs(self) -> Dict[str, Any]:
        """The review hyper-parameters that were given (not None)."""
        return {k: getattr(self, k) for k in OPTIMIZER_KEYS if getattr(self, k) is not None}


def pretrained_init_prefixes(model: nn.Module) -> List[str]:
    """Name prefixes of the modules whose ``init_cfg`` loads a ``Pretrained`` checkpoint."""
    prefixes = []
    for module_name, module in model.named_modules():
        init_cfg = getattr(module, 'init_cfg', None)
        cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
        for cfg in cfgs:
            if is_pretrained_init(cfg):
                prefixes.append(f'{module_name}.' if module_name else '')
                break
    return prefixes


def is_pretrained_init(cfg: Any) -> bool:
    """Whether an ``init_cfg`` entry loads a checkpoint (``type='Pretrained'``)."""
    if not isinstance(cfg, dict):
        return False
    init_type = cfg.get('type')
    return init_type == 'Pretrained' or getattr(init_type, '__name__', None) == 'PretrainedInit'


def pretrained_candidates(model: nn.Module, names: Sequence[str],
                          rule: Union[str, Sequence[str]]) -> List[str]:
    """The names that count as pretrained before any checkpoint is read (finetune mode).

    ``'auto'``: the tensors of modules whose ``init_cfg`` is ``Pretrained``, else those under
    ``backbone.``, else all; ``'backbone'``; ``'all'``; or a list of name prefixes.
    """
    if rule == 'all':
        return list(names)
    if rule == 'auto':
        prefixes = pretrained_init_prefixes(model) or ['backbone.']
        chosen = [n for n in names if any(n.startswith(p) for p in prefixes)]
        return chosen if chosen else list(names)
    prefixes = ['backbone.'] if rule == 'backbone' else list(rule)
    return [n for n in names if any(n.startswith(p) for p in prefixes)]


def _reviews(optimizer_cls: type) -> bool:
    """Whether instances of ``optimizer_cls`` apply the review step themselves (ours)."""
    return callable(getattr(optimizer_cls, 'capture_anchors', None))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DualOptOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus DualOpt's per-tensor review settings.

    Every ``paramwise_cfg`` key of :class:`~mmengine.optim.DefaultOptimWrapperConstructor`
    (``custom_keys``, ``bias_lr_mult``, ``bias_decay_mult``, ``norm_decay_mult``,
    ``dwconv_decay_mult``, ``flat_decay_mult``, ``dcn_offset_lr_mult``, ``bypass_duplicate``)
    works as there: the parent's ``add_params`` builds one group per trainable tensor (frozen
    tensors are left out), then this class writes into every group:

    - ``param_name``: the tensor's name (a plain string key: torch's own ``param_names``
      list is not used, so groups added later with ``add_param_group`` need no names);
    - ``mode``: ``'finetune'`` / ``'scratch'`` for reviewed tensors, ``'none'`` otherwise
      (``custom_keys={'neck': dict(mode='finetune')}`` overrides it per name);
    - ``block`` and ``block_index``: the tensor's layer unit and the unit's position in the
      depth order of the model (:func:`~dualopt_mm.engine.layer_index.assign_blocks`);
    - ``layer_id`` / ``num_layers``: the global layer index over the *reviewed* tensors
      (None for the others);
    - ``mode_auto``: True where ``mode`` came from ``pretrained='auto'``, which the hook may
      refine from the checkpoint keys.

    A torch ``SGD`` / ``Adam`` / ``AdamW`` is replaced by its DualOpt counterpart, so this is
    the whole conversion of a stock config::

        optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')

    The DualOpt options live in ``paramwise_cfg['dualopt']`` (:class:`DualOptOptions`)::

        optim_wrapper = dict(
            constructor='DualOptOptimWrapperConstructor',
            paramwise_cfg=dict(dualopt=dict(mode='finetune', k_max=0.01,
                                            layer_index='block', pretrained='auto')))

    A table of every tensor (name, block, layer, level, lr, weight decay, mode) is logged
    on rank 0.

    Args:
        optim_wrapper_cfg: as for the default constructor.
        paramwise_cfg: as for the default constructor, plus the ``dualopt`` key.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.options = DualOptOptions.from_cfg(paramwise_cfg.pop('dualopt', None))
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        for key, custom in self.paramwise_cfg.get('custom_keys', {}).items():
            if 'mode' in custom:
                check_mode(custom['mode'], f'paramwise_cfg.custom_keys[{key!r}]')
        given = dict(self.options.optimizer_kwargs())
        if self.options.mode is not None:
            given['mode'] = self.options.mode
        for key, value in given.items():
            if key in self.optimizer_cfg and self.optimizer_cfg[key] != value:
                raise ValueError(
                    f'{key} is given twice with different values: optimizer {key}='
                    f'{self.optimizer_cfg[key]!r}, paramwise_cfg.dualopt {key}={value!r}')
        mode = given.get('mode', self.optimizer_cfg.get('mode', 'finetune'))
        check_mode(mode, 'optimizer mode')
        #: the run's mode: the default of every group that custom_keys does not set
        self.mode: str = mode

    # -- optimizer class -------------------------------------------------------------------
    def resolve_optimizer(self) -> Tuple[type, bool]:
        """The optimizer class to build and whether it replaced a torch optimizer."""
        optimizer_type = self.optimizer_cfg['type']
        if isinstance(optimizer_type, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_type)
            if optimizer_cls is None:
                raise ValueError(f'optimizer type {optimizer_type!r} is not registered in '
                                 'OPTIMIZERS')
        else:
            optimizer_cls = optimizer_type
        if not self.options.swap_optimizer:
            return optimizer_cls, False
        for torch_name, dualopt_name in SWAPS.items():
            if optimizer_cls is getattr(torch.optim, torch_name):
                from .. import optim as dualopt_optim
                return getattr(dualopt_optim, dualopt_name), True
        return optimizer_cls, False

    # -- param groups ----------------------------------------------------------------------
    def annotate(self, params: List[dict], model: nn.Module) -> None:
        """Write the DualOpt keys into the groups that ``add_params`` made (in place)."""
        name_of = {id(p): n for n, p in model.named_parameters()}  # first name of a shared one
        names = []
        for group in params:
            if len(group['params']) != 1:
                raise ValueError(f'expected one tensor per param group, got '
                                 f'{len(group["params"])}')
            names.append(name_of[id(group['params'][0])])
        if len(set(names)) != len(names):
            shared = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f'parameters {shared} are in several param groups (shared '
                             'weights): set paramwise_cfg bypass_duplicate=True')

        options = self.options
        candidates = set(pretrained_candidates(model, names, options.pretrained))
        for name, group in zip(names, params):
            group['param_name'] = name
            if 'mode' in group:  # from custom_keys: the user decided
                group['mode_auto'] = False
            elif self.mode == 'finetune':
                group['mode'] = 'finetune' if name in candidates else 'none'
                group['mode_auto'] = options.pretrained == 'auto'
            else:
                group['mode'] = self.mode
                group['mode_auto'] = False

        blocks = assign_blocks(names, options.layer_index, DEFAULT_RULES,
                               options.get_layer_index)
        for group, (block, block_index) in zip(params, blocks):
            group['block'] = block
            group['block_index'] = block_index
        assign_layer_ids(params)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if hasattr(model, 'module'):
            model = model.module
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls, swapped = self.resolve_optimizer()
        reviews = _reviews(optimizer_cls)

        params: List[dict] = []
        self.add_params(params, model)  # mmengine's paramwise rules, one group per tensor
        self.annotate(params, model)

        extra = self.options.optimizer_kwargs()
        if reviews:
            optimizer_cfg['mode'] = self.mode
            optimizer_cfg.update(extra)
        else:
            for group in params:  # carried for WeightRollbackHook(review=True)
                if group['mode'] != 'none':
                    for key, value in extra.items():
                        group.setdefault(key, value)
            if any(group['mode'] != 'none' for group in params):
                print_log(
                    f'{optimizer_cls.__name__} does not apply the DualOpt review step: add '
                    "custom_hooks=[dict(type='WeightRollbackHook', review=True)] or use a "
                    'DualOpt optimizer', logger='current', level=logging.WARNING)
        optimizer_cfg['type'] = optimizer_cls
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg.pop('params', None)
        optimizer_cfg[first_arg] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)

        if is_main_process():
            fallback = optimizer.defaults if reviews else extra
            header = (f'DualOpt param groups ({optimizer_cls.__name__}'
                      + (f', replacing {self.optimizer_cfg["type"]}' if swapped else '')
                      + f', layer_index={self.options.layer_index!r}, '
                      f'pretrained={self.options.pretrained!r}):\n')
            print_log(header + format_table(level_rows(optimizer.param_groups, fallback)),
                      logger='current')
            if self.mode == 'finetune' and self.options.pretrained == 'auto':
                print_log(
                    "pretrained='auto': WeightRollbackHook refines the reviewed tensors to "
                    'those a checkpoint fills (load_from / init_cfg=Pretrained) at '
                    'before_train; without the hook the build-time rule above holds',
                    logger='current')
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))


def assign_layer_ids(groups: Sequence[dict]) -> None:
    """``layer_id`` / ``num_layers`` of every group from ``block_index`` and ``mode``.

    Reviewed groups (mode other than 'none') are numbered densely in block order; the others
    get None. Used by the constructor and, after refining the modes, by the hook.
    """
    reviewed = [g.get('block_index') if g.get('mode') != 'none' else None for g in groups]
    layer_ids, num_layers = dense_layer_ids(reviewed)
    for group, layer_id in zip(groups, layer_ids):
        group['layer_id'] = layer_id
        group['num_layers'] = num_layers if layer_id is not None else None
