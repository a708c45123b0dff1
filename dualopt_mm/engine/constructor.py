"""``DualOptOptimWrapperConstructor``: mmengine param groups for DualOpt / OLOR.

The constructor decides, for every trainable tensor of the model, whether it is reviewed
(rolled back toward its pretrained value, or decayed toward 0 from scratch) and its global
layer index, and writes that into the tensor's param group. The optimizers only read
per-group scalars (docs/integration.md).
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

from ..optim.base import reviews_itself
from ..optim.hyperparams import REVIEW_DEFAULTS, check_mode, close_matches, did_you_mean
from .base_constructor import (
    DEFAULT_CONSTRUCTOR,
    DEFAULT_PARAMWISE_KEYS,
    infer_base_constructor,
    resolve_constructor,
    split_groups,
)
from .layer_index import DEFAULT_RULES, GENERIC, dense_layer_ids, index_blocks
from .options import DualOptOptions, resolve_optimizer
from .pretrained import (
    PretrainedSources,
    calling_runner,
    decide_mode,
    preinitialised_prefixes,
    pretrained_candidates,
)
from .report import format_table, level_rows
from .strategies import check_strategy
from .strategies.fsdp import clean_name, is_fsdp, pad_anchor_state

#: Keys of a ``custom_keys`` entry that mmengine's default constructor reads.
CUSTOM_KEY_KEYS = ('lr_mult', 'decay_mult')

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

    and the rest of the config keeps its meaning:

    - lr and weight decay per tensor come from the config's own constructor: mmengine's
      default rules, or a layer-wise lr decay constructor recognised from its
      ``paramwise_cfg`` keys (:mod:`dualopt_mm.engine.base_constructor`), or
      ``dualopt.base_constructor``; unknown ``paramwise_cfg`` keys are refused;
    - with ``k_unit='base_lr'`` a group at r times the optimizer's lr gets levels r·k_i, so
      λ is proportional to its lr (:meth:`scale_levels`);
    - without a ``mode``, a config that names no pretrained weights anywhere (no ``init_cfg``
      checkpoint, no ``load_from``, no module loaded when built) runs in scratch mode
      (:meth:`_decide_mode`), logged;
    - mmengine's ``ZeroRedundancyOptimizer`` becomes
      :class:`~dualopt_mm.engine.zero.DualOptZeroRedundancyOptimizer` (θ_0 sharded); FSDP
      with ``use_orig_params=True`` and DeepSpeed ZeRO-1/2 are supported, what they cannot
      run is refused (:func:`~dualopt_mm.engine.strategies.check_strategy`).

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
        #: the constructor that builds the lr / weight-decay groups (None: mmengine's default)
        self.base_constructor: Optional[str] = (
            self.options.base_constructor if self.options.base_constructor is not None
            else infer_base_constructor(paramwise_cfg))
        if self.base_constructor in (DEFAULT_CONSTRUCTOR, f'mmengine.{DEFAULT_CONSTRUCTOR}'):
            self.base_constructor = None
        #: what the base constructor receives: the config's paramwise_cfg, dualopt removed
        self.base_paramwise_cfg = copy.deepcopy(paramwise_cfg)
        if self.base_constructor is not None:  # its own keys are its business
            paramwise_cfg = {k: v for k, v in paramwise_cfg.items()
                             if k in DEFAULT_PARAMWISE_KEYS}
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        custom_keys = self.base_paramwise_cfg.get('custom_keys', {}) or {}
        for key, custom in custom_keys.items():
            if isinstance(custom, dict) and 'mode' in custom:
                check_mode(custom['mode'], f'paramwise_cfg.custom_keys[{key!r}]')
        given = dict(self.options.optimizer_kwargs())
        if self.options.mode is not None:
            given['mode'] = self.options.mode
        for key, value in given.items():
            if key in self.optimizer_cfg and self.optimizer_cfg[key] != value:
                raise ValueError(
                    f'{key} is given twice with different values: optimizer {key}='
                    f'{self.optimizer_cfg[key]!r}, paramwise_cfg.dualopt {key}={value!r}')
        #: the mode the config asks for (None: decided from the pretrained sources)
        self.mode_given: Optional[str] = given.get('mode', self.optimizer_cfg.get('mode'))
        if self.mode_given is not None:
            check_mode(self.mode_given, 'optimizer mode')
        #: the run's mode: the default of every group that custom_keys does not set
        self.mode: str = self.mode_given or 'finetune'
        self._check_custom_keys(custom_keys)

    def _check_custom_keys(self, custom_keys: dict) -> None:
        """Refuse a key of a ``custom_keys`` entry that is a near miss of a review or mmengine
        key (``k_maxx``, ``lr_mul``): mmengine would copy it into the group unread."""
        self.resolve_optimizer()
        known = set(REVIEW_DEFAULTS) | set(CUSTOM_KEY_KEYS) | {'reference'}
        known |= set(inspect.signature(self.local_optimizer).parameters)
        targets = sorted(set(REVIEW_DEFAULTS) | set(CUSTOM_KEY_KEYS))
        for pattern, custom in custom_keys.items():
            if not isinstance(custom, dict):
                continue
            for key in custom:
                if key in known:
                    continue
                matches = close_matches(key, targets, cutoff=0.8)
                if matches:
                    raise ValueError(
                        f'paramwise_cfg.custom_keys[{pattern!r}] has the unknown key {key!r} '
                        f'(did you mean {" or ".join(map(repr, matches))}?): it would be '
                        'copied into the param groups and read by nothing')

    def _decide_mode(self, model: nn.Module, runner: Any = None
                     ) -> Optional[PretrainedSources]:
        """Set :attr:`mode` (and :attr:`auto_scratch`) from the config and the pretrained
        sources (:func:`~dualopt_mm.engine.pretrained.decide_mode`)."""
        self.mode, self.auto_scratch, sources = decide_mode(
            self.mode_given, self.options.pretrained, model, runner)
        return sources

    # -- optimizer class -------------------------------------------------------------------
    def resolve_optimizer(self) -> tuple[type, bool]:
        """The optimizer class to build and whether it replaced a torch optimizer
        (:func:`~dualopt_mm.engine.options.resolve_optimizer`); sets :attr:`local_optimizer`
        (the class that steps) and :attr:`zero_optimizer_type` (None: not ZeRO)."""
        resolved = resolve_optimizer(self.optimizer_cfg, self.options.swap_optimizer)
        self.local_optimizer: type = resolved.local
        self.zero_optimizer_type: Any = resolved.zero_type
        return resolved.cls, resolved.swapped

    # -- param groups ----------------------------------------------------------------------
    def build_groups(self, model: nn.Module) -> list[dict]:
        """One group per trainable tensor, lr and weight decay as the base constructor sets
        them (mmengine's default rules, or the config's layer-decay constructor)."""
        params: list[dict] = []
        if self.base_constructor is None:
            self.add_params(params, model)  # mmengine's paramwise rules, one group per tensor
            return params
        base_cls = resolve_constructor(self.base_constructor)
        base = base_cls(dict(self.optim_wrapper_cfg, optimizer=copy.deepcopy(self.optimizer_cfg)),
                        copy.deepcopy(self.base_paramwise_cfg))
        base.add_params(params, model)
        return split_groups(params, model)

    def annotate(self, params: list[dict], model: nn.Module) -> None:
        """Write the DualOpt keys into the groups that ``add_params`` made (in place)."""
        # first name of a shared tensor; FSDP's wrapper components removed
        name_of = {id(p): clean_name(n) for n, p in model.named_parameters()}
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
        if not isinstance(options.pretrained, str):
            self._check_prefixes(options.pretrained, names, model)
        candidates = set(pretrained_candidates(model, names, options.pretrained))
        # modules that loaded their weights when built (TIMMBackbone(pretrained=True)) are
        # pretrained for sure: no checkpoint the hook could read says otherwise
        built = tuple(clean_name(p) for p in preinitialised_prefixes(model))
        for name, group in zip(names, params):
            group['param_name'] = name
            if 'mode' in group:  # from custom_keys: the user decided
                group['mode_auto'] = False
            elif self.mode == 'finetune':
                group['mode'] = 'finetune' if name in candidates else 'none'
                group['mode_auto'] = options.pretrained == 'auto' and not (
                    built and name.startswith(built))
            else:
                group['mode'] = self.mode
                group['mode_auto'] = False

        index = index_blocks(names, options.layer_index, DEFAULT_RULES,
                             options.get_layer_index, model)
        self.index_rules: dict[str, str] = {}
        if options.layer_index != 'tensor':
            reviewed = {n for n, g in zip(names, params) if g['mode'] != 'none'}
            # where each reviewed top-level module's order comes from ('backbone' ->
            # 'timm group_matcher', 'rule: ResNet', ...)
            self.index_rules = index.by_module(names, reviewed)
            if index.refused and is_main_process():
                print_log('DualOpt layer index: upstream depth definitions not used: '
                          + '; '.join(index.refused), logger='current')
            generic = sorted(m for m, rule in self.index_rules.items() if rule == GENERIC)
            if generic and is_main_process():
                print_log(
                    f'DualOpt layer index: no block rule knows {", ".join(generic)}: the '
                    'generic rule is used (one level per module, in registration order). Add '
                    'one with paramwise_cfg.dualopt.get_layer_index (a callable name -> '
                    '(block, depth)) or dualopt_mm.engine.DEFAULT_RULES + '
                    "(ArchitectureRule('MyNet', BlockPattern(r'blocks\\.(?P<b>\\d+)\\.')),)",
                    logger='current')
        for group, (block, block_index), source in zip(params, index.blocks, index.sources):
            group['block'] = block
            group['block_index'] = block_index
            group['index_source'] = source
        assign_layer_ids(params)

    @staticmethod
    def _check_prefixes(prefixes: Sequence[str], names: Sequence[str], model: nn.Module) -> None:
        """Refuse a ``pretrained`` prefix that matches no trainable tensor, naming the close
        module names."""
        modules = [f'{clean_name(n + ".")}' for n, _ in model.named_modules() if n]
        for prefix in prefixes:
            if not any(name.startswith(prefix) for name in names):
                raise ValueError(
                    f'paramwise_cfg.dualopt.pretrained prefix {prefix!r} matches no trainable '
                    f'tensor{did_you_mean(prefix, modules, cutoff=0.7)}: nothing would be '
                    'reviewed')

    def scale_levels(self, params: list[dict], optimizer_defaults: dict[str, Any]) -> None:
        """k_unit='base_lr': a group whose lr is r times the optimizer's lr (``lr_mult``,
        ``bias_lr_mult``, layer-wise lr decay) gets levels r·k, so that
        λ = (η_t / η_base) · k_i with η_base the *optimizer's* base lr: λ stays proportional
        to the group's lr, as in the papers' λ = η·k (docs/integration.md, "Levels follow the
        lr multipliers")."""
        base_lr = self.base_lr
        if not base_lr:
            return
        for group in params:  # groups in mode 'none' too: WeightRollbackHook may refine them
            if 'lr' not in group:
                continue
            setting = {k: group.get(k, optimizer_defaults.get(k, REVIEW_DEFAULTS[k]))
                       for k in ('k_unit', 'k_max', 'k_min')}
            ratio = float(group['lr']) / float(base_lr)
            group['lr_ratio'] = ratio
            if setting['k_unit'] != 'base_lr' or ratio == 1.0:
                continue
            group['k_max'] = setting['k_max'] * ratio
            group['k_min'] = setting['k_min'] * ratio
            if group['k_max'] > 1 and group.get('mode') != 'none':
                raise ValueError(
                    f'{group["param_name"]}: its lr is {ratio:g} x the optimizer lr, so its '
                    f"level k_max = {setting['k_max']!r} x {ratio:g} = {group['k_max']:.4g} > 1 "
                    "with k_unit='base_lr' (lambda would exceed 1 at the peak lr): lower "
                    'k_max, or exempt it with custom_keys mode=\'none\'')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        wrapped, fsdp = model, is_fsdp(model)
        if hasattr(model, 'module'):
            model = model.module
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls, swapped = self.resolve_optimizer()
        reviews = reviews_itself(self.local_optimizer)
        if self.zero_optimizer_type is not None:
            optimizer_cfg['optimizer_type'] = self.zero_optimizer_type
        # mmengine passes the constructor no runner: found once on the stack, then passed on
        runner = calling_runner()
        sources = self._decide_mode(model, runner)
        check_strategy(wrapped, runner, self.mode,  # FSDP / DeepSpeed: refused settings
                       self.options.review.get('skip_1d', self.optimizer_cfg.get('skip_1d')),
                       self.local_optimizer.__name__ if reviews else None)

        extra = self.options.optimizer_kwargs()
        if self.auto_scratch and not any(k in extra or k in optimizer_cfg
                                         for k in ('k_max', 'k_unit')):
            # levels of a fine-tuning rollback (1 % per step) would crush a from-scratch run:
            # the layer-wise decay adds at most the config's own weight decay
            extra = dict(extra, k_unit='absolute',
                         k_max=float(optimizer_cfg.get('weight_decay', 0.0) or 0.0))
        params = self.build_groups(model)
        self.annotate(params, model)

        if reviews:
            optimizer_cfg['mode'] = self.mode
            optimizer_cfg.update(extra)
            defaults = dict(optimizer_cfg)
        else:
            for group in params:  # carried for WeightRollbackHook(review=True)
                if group['mode'] != 'none':
                    for key, value in extra.items():
                        group.setdefault(key, value)
            defaults = dict(extra)
            if any(group['mode'] != 'none' for group in params):
                print_log(
                    f'{optimizer_cls.__name__} does not apply the DualOpt review step: add '
                    "custom_hooks=[dict(type='WeightRollbackHook', review=True)] or use a "
                    'DualOpt optimizer', logger='current', level=logging.WARNING)
        self.scale_levels(params, defaults)
        optimizer_cfg['type'] = optimizer_cls
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg.pop('params', None)
        optimizer_cfg[first_arg] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        if fsdp and reviews:
            pad_anchor_state(optimizer)  # FSDP's optim_state_dict needs anchors everywhere

        if is_main_process():
            self._log(optimizer, optimizer_cls, swapped, reviews, extra, sources)
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

    def _log(self, optimizer: torch.optim.Optimizer, optimizer_cls: type, swapped: bool,
             reviews: bool, extra: dict[str, Any], sources: Optional[PretrainedSources]) -> None:
        fallback = optimizer.defaults if reviews else extra
        header = (f'DualOpt param groups ({optimizer_cls.__name__}'
                  + (f', replacing {self.optimizer_cfg["type"]}' if swapped else '')
                  + (f', lr / weight decay by {self.base_constructor}'
                     if self.base_constructor else '')
                  + f', mode={self.mode!r}, layer_index={self.options.layer_index!r}'
                  + (f' {self.index_rules}' if getattr(self, 'index_rules', None) else '')
                  + f', pretrained={self.options.pretrained!r}):\n')
        print_log(header + format_table(level_rows(optimizer.param_groups, fallback)),
                  logger='current')
        if self.base_constructor and self.options.base_constructor is None:
            print_log(f'paramwise_cfg carries the layer-decay keys of {self.base_constructor}: '
                      'it builds the lr / weight-decay groups, DualOpt adds the review '
                      '(paramwise_cfg.dualopt.base_constructor names another one)',
                      logger='current')
        if self.auto_scratch:
            print_log(
                'DualOpt: no pretrained weights are configured (no load_from, no init_cfg '
                "Pretrained, no module loaded when built): mode 'scratch' (real-time "
                'layer-wise weight decay toward 0 of every tensor, on top of the config\'s '
                f"weight decay; k_unit={fallback.get('k_unit')!r}, "
                f"k_max={fallback.get('k_max')!r}). Set load_from / init_cfg, or "
                "paramwise_cfg=dict(dualopt=dict(mode='finetune')) if the weights come from "
                'elsewhere', logger='current', level=logging.WARNING)
        if self.mode == 'finetune' and self.options.pretrained == 'auto':
            print_log(
                f'pretrained sources: {sources.describe() if sources else "-"}. '
                "pretrained='auto': WeightRollbackHook refines the reviewed tensors to "
                'those a checkpoint fills (load_from / init_cfg=Pretrained) at '
                'before_train; without the hook the build-time rule above holds',
                logger='current')


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
