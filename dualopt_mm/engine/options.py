"""The options of ``paramwise_cfg['dualopt']`` and the optimizer class a config's
``optimizer`` resolves to under ``DualOptOptimWrapperConstructor``: a torch ``SGD`` /
``Adam`` / ``AdamW`` swapped for its DualOpt counterpart, mmengine's
``ZeroRedundancyOptimizer`` for DualOpt's."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from ..optim.hyperparams import REVIEW_DEFAULTS, check_mode, check_review_group, did_you_mean
from ..registry import optimizer_class
from .layer_index import LAYER_INDEX_STRATEGIES, GetLayerIndex
from .zero import DualOptZeroRedundancyOptimizer

__all__ = ['DualOptOptions', 'OPTIMIZER_KEYS', 'PRETRAINED_RULES', 'ResolvedOptimizer', 'SWAPS',
           'resolve_optimizer']

#: ``paramwise_cfg['dualopt']`` keys forwarded to the optimizer (its ``defaults``).
#: The review hyper-parameters ``paramwise_cfg.dualopt`` passes on to the optimizer (the
#: others, ``mode`` and the layer keys, the constructor decides per group).
OPTIMIZER_KEYS = tuple(k for k in REVIEW_DEFAULTS
                       if k not in ('mode', 'layer_id', 'num_layers', 'base_lr'))

PRETRAINED_RULES = ('auto', 'backbone', 'all')


@dataclass
class DualOptOptions:
    """The options of ``paramwise_cfg['dualopt']`` (all optional).

    Args:
        mode: None (the optimizer's ``mode`` kwarg if given, else ``'finetune'`` when the
            config names pretrained weights and ``'scratch'`` when it names none anywhere,
            see :meth:`DualOptOptimWrapperConstructor._decide_mode`),
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
        layer_index: ``'block'`` (architecture-aware: the backbone's own depth definition,
            timm's ``group_matcher`` or mmpretrain's ``get_layer_depth``, else the rules of
            :mod:`dualopt_mm.engine.layer_index`), ``'rules'`` (those rules only) or
            ``'tensor'`` (tensor order, like the authors' reference code).
        get_layer_index: optional ``name -> (block, depth) | None`` callable consulted before
            the built-in rules of ``layer_index='block'``.
        swap_optimizer: replace a torch ``SGD`` / ``Adam`` / ``AdamW`` by ``DualOptSGD`` /
            ``DualOptAdam`` / ``DualOptAdamW`` (same kwargs), so a stock config is converted
            by naming this constructor. With False (or an optimizer that has no DualOpt
            counterpart), add ``WeightRollbackHook(review=True)`` to get the review step.
        base_constructor: the registered name of the constructor that builds the lr /
            weight-decay groups (``'mmseg.LearningRateDecayOptimizerConstructor'``, a user
            constructor, ...). None: recognised from the layer-decay keys of ``paramwise_cfg``
            (:func:`~dualopt_mm.engine.base_constructor.infer_base_constructor`), else
            mmengine's default constructor.
        review: the optimizer's review hyper-parameters given here, by their own names
            (``k_max``, ``k_min``, ``gamma``, ``k_unit``, ``reverse``, ``skip_1d``,
            ``anchor_dtype``: :mod:`dualopt_mm.optim.hyperparams`), e.g.
            ``paramwise_cfg.dualopt.k_max=0.02``; the others keep the optimizer's value. They
            may equally be given in ``optimizer=dict(...)``; giving both different values is
            an error.
    """

    mode: Optional[str] = None
    pretrained: Union[str, Sequence[str]] = 'auto'
    layer_index: str = 'block'
    get_layer_index: Optional[GetLayerIndex] = None
    swap_optimizer: bool = True
    base_constructor: Optional[str] = None
    review: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg: Optional[dict]) -> DualOptOptions:
        """Build from ``paramwise_cfg['dualopt']`` (review hyper-parameters by their own names);
        ValueError on an unknown key or value."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls) if f.name != 'review'} | set(OPTIMIZER_KEYS)
        unknown = sorted(set(cfg) - known)
        if unknown:
            hints = ''.join(did_you_mean(key, sorted(known)) for key in unknown)
            raise ValueError(f'unknown paramwise_cfg.dualopt keys {unknown}{hints}: allowed are '
                             f'{sorted(known)}')
        review = {k: cfg.pop(k) for k in OPTIMIZER_KEYS if k in cfg and cfg[k] is not None}
        for key in OPTIMIZER_KEYS:
            cfg.pop(key, None)
        options = cls(review=review, **cfg)
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
        if self.base_constructor is not None and not isinstance(self.base_constructor, str):
            raise ValueError(f'paramwise_cfg.dualopt.base_constructor={self.base_constructor!r}'
                             ' must be the registered name of a constructor')
        if not isinstance(self.swap_optimizer, bool):
            raise ValueError(f'paramwise_cfg.dualopt.swap_optimizer={self.swap_optimizer!r} '
                             'must be a bool')
        # the optimizers' own validation, on the defaults completed by what was given
        check_review_group({**REVIEW_DEFAULTS, **self.review}, 'paramwise_cfg.dualopt')

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The review hyper-parameters that were given (not None)."""
        return dict(self.review)


#: The torch optimizers the constructor replaces by their DualOpt counterpart.
SWAPS = {'SGD': 'DualOptSGD', 'Adam': 'DualOptAdam', 'AdamW': 'DualOptAdamW'}


@dataclass
class ResolvedOptimizer:
    """What a config's ``optimizer`` builds.

    Attributes:
        cls: the class to build.
        local: the class that steps (a ZeRO optimizer's local optimizer, else ``cls``).
        swapped: whether a torch optimizer was replaced by its DualOpt counterpart.
        zero_type: the ``optimizer_type`` a ZeRO optimizer gets (None: not ZeRO).
    """

    cls: type
    local: type
    swapped: bool
    zero_type: Any = None


def _dualopt_counterpart(optimizer_cls: type) -> Optional[str]:
    return next((dualopt for name, dualopt in SWAPS.items()
                 if optimizer_cls is getattr(torch.optim, name)), None)


def resolve_optimizer(optimizer_cfg: dict, swap: bool) -> ResolvedOptimizer:
    """The optimizer class of ``optimizer_cfg`` (``type``, ``optimizer_type``), torch's
    swapped for DualOpt's when ``swap``.

    A ZeRO optimizer (mmengine's ``ZeroRedundancyOptimizer`` or
    :class:`~dualopt_mm.engine.zero.DualOptZeroRedundancyOptimizer`) becomes the latter, its
    ``optimizer_type`` swapped like a plain optimizer.
    """
    optimizer_cls = optimizer_class(optimizer_cfg['type'])
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, ZeroRedundancyOptimizer):
        inner = optimizer_cfg.get('optimizer_type', 'SGD')
        local = optimizer_class(inner)
        dualopt = _dualopt_counterpart(local) if swap else None
        if dualopt is not None:
            local, inner = optimizer_class(dualopt), dualopt
        return ResolvedOptimizer(DualOptZeroRedundancyOptimizer, local, dualopt is not None,
                                 inner if isinstance(inner, str) else local)
    dualopt = _dualopt_counterpart(optimizer_cls) if swap else None
    if dualopt is None:
        return ResolvedOptimizer(optimizer_cls, optimizer_cls, False)
    return ResolvedOptimizer(optimizer_class(dualopt), optimizer_class(dualopt), True)
