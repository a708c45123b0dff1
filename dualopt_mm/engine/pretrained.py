"""What is pretrained in a run: the sources a config names (``init_cfg`` checkpoints, modules
that loaded weights when built, ``load_from``), which tensors a checkpoint filled, and the
pretrained weights themselves (for θ_0 on a resume from another optimizer's state).

The pretrained tensors are the ones a checkpoint really filled: the keys of ``load_from`` (seen
in the hook's ``after_load_checkpoint``) and of every
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``, matched by name and shape as
mmengine's non-strict loading does. A ``Pretrained`` module none of whose parameter names
appear in its checkpoint (a backbone that converts foreign keys in its own ``init_weights``,
like mmdet's Swin with ``convert_weights=True``) counts as filled entirely, with a warning.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .strategies.fsdp import clean_name

__all__ = ['PretrainedSources', 'calling_runner', 'checkpoint_tensors_shapes', 'decide_mode',
           'filled_by_init_cfg', 'filled_names', 'init_cfg_checkpoints', 'is_pretrained_init',
           'preinitialised_prefixes', 'pretrained_candidates', 'pretrained_init_prefixes',
           'pretrained_weights', 'state_dict_of']


def pretrained_init_prefixes(model: nn.Module) -> list[str]:
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
    """Whether an ``init_cfg`` entry loads a checkpoint: ``type='Pretrained'``, or no type and
    a ``checkpoint`` key (mmdet's PVT reads ``init_cfg=dict(checkpoint=...)`` itself)."""
    if not isinstance(cfg, dict):
        return False
    init_type = cfg.get('type')
    if init_type is None:
        return bool(cfg.get('checkpoint'))
    return init_type == 'Pretrained' or getattr(init_type, '__name__', None) == 'PretrainedInit'


def preinitialised_prefixes(model: nn.Module) -> list[str]:
    """Name prefixes of the modules that loaded their weights when they were built.

    mmengine marks a module initialised (``_is_init``) when ``init_weights`` ran; before the
    model's own ``init_weights`` (mmengine's Runner builds the optimizer first) a module so
    marked filled its weights at construction, e.g. mmpretrain's
    ``TIMMBackbone(pretrained=True)``. Empty when the model itself is already initialised
    (FlexibleRunner initialises before building the optimizer): nothing can be told then.
    """
    if getattr(model, '_is_init', False):
        return []
    prefixes: list[str] = []
    for module_name, module in model.named_modules():
        if not module_name or not getattr(module, '_is_init', False):
            continue
        prefix = f'{module_name}.'
        if not any(prefix.startswith(p) for p in prefixes) and any(
                True for _ in module.parameters()):
            prefixes.append(prefix)
    return prefixes


def calling_runner() -> Any:
    """The mmengine ``Runner`` / ``FlexibleRunner`` building the optimizer, or None.

    mmengine builds the optim wrapper from ``Runner.build_optim_wrapper`` without passing the
    runner on; its ``load_from`` (a pretrained source the model cannot show) is read from the
    calling frames.
    """
    from mmengine.runner import FlexibleRunner, Runner
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get('self')
            if isinstance(candidate, (Runner, FlexibleRunner)):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


@dataclass
class PretrainedSources:
    """Where the pretrained weights of a run come from, as far as the constructor can see.

    Args:
        init_prefixes: modules whose ``init_cfg`` loads a checkpoint.
        built_prefixes: modules that loaded weights when built (``TIMMBackbone``).
        load_from: the runner's ``load_from``.
        runner_seen: whether a Runner was found (else ``load_from`` is unknown).
        resume: whether the runner resumes (modes then come from the checkpoint).
    """

    init_prefixes: list[str]
    built_prefixes: list[str]
    load_from: Optional[str]
    runner_seen: bool
    resume: bool = False

    @classmethod
    def find(cls, model: nn.Module, runner: Any = None) -> PretrainedSources:
        """The sources of ``model`` built by ``runner`` (default: :func:`calling_runner`)."""
        runner = runner if runner is not None else calling_runner()
        return cls(init_prefixes=pretrained_init_prefixes(model),
                   built_prefixes=preinitialised_prefixes(model),
                   load_from=getattr(runner, '_load_from', None) if runner else None,
                   runner_seen=runner is not None,
                   resume=bool(getattr(runner, '_resume', False)) if runner else False)

    @property
    def any(self) -> bool:
        return bool(self.init_prefixes or self.built_prefixes or self.load_from)

    @property
    def none_anywhere(self) -> bool:
        """True when a runner was seen and nothing pretrained is configured anywhere."""
        return self.runner_seen and not self.any and not self.resume

    def describe(self) -> str:
        parts = [f'init_cfg of {p.rstrip(".") or "the model"}' for p in self.init_prefixes]
        parts += [f'{p.rstrip(".")} (loaded when built)' for p in self.built_prefixes]
        if self.load_from:
            parts.append(f'load_from={self.load_from}')
        return ', '.join(parts) if parts else 'none'


def decide_mode(mode_given: Optional[str], rule: Union[str, Sequence[str]], model: nn.Module,
                runner: Any = None) -> tuple[str, bool, Optional[PretrainedSources]]:
    """The run's mode, whether scratch was chosen for want of pretrained weights, and the
    pretrained sources (None when the mode needs none); logs the decision.

    No mode given: ``'finetune'`` when the config names pretrained weights (an ``init_cfg``
    checkpoint, a module that loaded weights when built, the runner's ``load_from``),
    ``'scratch'`` when a Runner builds the optimizer and none is named anywhere (``rule``
    ``'auto'`` only). Outside a Runner ``load_from`` cannot be seen and finetune is kept.
    ``mode='finetune'`` given with no pretrained source is warned about.
    """
    if mode_given in ('scratch', 'none'):
        return mode_given, False, None
    sources = PretrainedSources.find(model, runner)
    if mode_given is None and rule == 'auto' and sources.none_anywhere:
        return 'scratch', True, sources
    if mode_given == 'finetune' and not sources.any and not sources.resume:
        print_log(
            "DualOpt mode='finetune' but no pretrained weights are configured (no "
            'load_from, no init_cfg Pretrained'
            + ('' if sources.runner_seen else '; load_from unknown: no Runner') +
            '): the review rolls the weights back toward their random initialisation. '
            "Set load_from or the backbone's init_cfg=dict(type='Pretrained', "
            "checkpoint=...), or use paramwise_cfg=dict(dualopt=dict(mode='scratch'))",
            logger='current', level=logging.WARNING)
    return mode_given or 'finetune', False, sources


def pretrained_candidates(model: nn.Module, names: Sequence[str],
                          rule: Union[str, Sequence[str]]) -> list[str]:
    """The names that count as pretrained before any checkpoint is read (finetune mode).

    ``'auto'``: the tensors of modules whose ``init_cfg`` is ``Pretrained``, else those under
    ``backbone.``, else all; ``'backbone'``; ``'all'``; or a list of name prefixes.
    """
    if rule == 'all':
        return list(names)
    if rule == 'auto':
        prefixes = [clean_name(p) for p in
                    pretrained_init_prefixes(model) + preinitialised_prefixes(model)]
        prefixes = prefixes or ['backbone.']
        chosen = [n for n in names if any(n.startswith(p) for p in prefixes)]
        return chosen if chosen else list(names)
    prefixes = ['backbone.'] if rule == 'backbone' else list(rule)
    return [n for n in names if any(n.startswith(p) for p in prefixes)]


def checkpoint_tensors_shapes(state_dict: dict[str, Any], prefix: str = '') -> dict[str, tuple]:
    """``{key: shape}`` of the tensors of a state dict, ``module.`` stripped like mmengine, only
    keys under ``prefix`` (stripped) when given."""
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    shapes = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith('module.'):
            key = key[len('module.'):]
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        shapes[key] = tuple(value.shape)
    return shapes


def state_dict_of(checkpoint: Any) -> dict[str, Any]:
    """The weights of a loaded checkpoint (``state_dict``, ``model`` or the dict itself)."""
    if not isinstance(checkpoint, dict):
        return {}
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def filled_names(model: nn.Module, load_from_shapes: Optional[dict[str, tuple]],
                 shapes: Optional[dict[str, tuple]] = None) -> Optional[set[str]]:
    """Names of the parameters a checkpoint filled, or None when none is configured.

    ``shapes``: ``name -> shape`` of the model's parameters as a checkpoint holds them (names
    without wrapper parts, unsharded: :meth:`~dualopt_mm.engine.strategies.StrategyAdapter.
    full_shapes`); default: read off ``model``, right for whole tensors only.
    """
    if shapes is None:
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    filled: set[str] = set()
    configured = False
    if load_from_shapes is not None:
        configured = True
        filled |= {n for n, shape in shapes.items() if load_from_shapes.get(n) == shape}
    for prefix in pretrained_init_prefixes(model):
        configured = True
        module = model.get_submodule(prefix.rstrip('.')) if prefix else model
        clean = clean_name(prefix)
        filled |= filled_by_init_cfg(module, clean, {
            n[len(clean):]: shape for n, shape in shapes.items() if n.startswith(clean)})
    return filled if configured else None


def init_cfg_checkpoints(module: nn.Module) -> list[dict]:
    init_cfgs = module.init_cfg if isinstance(module.init_cfg, (list, tuple)) else [
        module.init_cfg]
    return [cfg for cfg in init_cfgs if is_pretrained_init(cfg)]


def filled_by_init_cfg(module: nn.Module, prefix: str,
                       shapes: Optional[dict[str, tuple]] = None) -> set[str]:
    """Names (``prefix`` + name in ``module``) of the parameters of ``module`` its
    ``init_cfg`` checkpoints fill, matched by name and shape (``shapes``: the full shapes by
    name in ``module``, default read off ``module``)."""
    names = shapes if shapes is not None else {n: tuple(p.shape)
                                               for n, p in module.named_parameters()}
    filled: set[str] = set()
    for cfg in init_cfg_checkpoints(module):
        try:
            checkpoint = CheckpointLoader.load_checkpoint(
                cfg['checkpoint'], map_location='cpu', logger='current')
        except Exception as error:  # noqa: BLE001 - the weights did load in init_weights
            print_log(f'cannot re-read {cfg["checkpoint"]} to see which tensors it fills '
                      f'({error!r}): counting all parameters of '
                      f'{prefix.rstrip(".") or "the model"} as pretrained',
                      logger='current', level=logging.WARNING)
            checkpoint = {}
        shapes = checkpoint_tensors_shapes(state_dict_of(checkpoint),
                                           cfg.get('prefix') or '')
        matched = {n for n, shape in names.items() if shapes.get(n) == shape}
        if not matched and shapes:
            print_log(
                f'none of the parameter names of {prefix.rstrip(".") or "the model"} '
                f'appear in {cfg["checkpoint"]} (its init_weights converts the keys?): '
                'counting all of its parameters as pretrained', logger='current',
                level=logging.WARNING)
        if not matched:
            matched = set(names)
        filled |= {prefix + n for n in matched}
    return filled


def pretrained_weights(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors the config's ``init_cfg=Pretrained`` checkpoints hold, by model name
    (matched by name and shape), and the checkpoint paths read."""
    params = dict(model.named_parameters())
    weights: dict[str, torch.Tensor] = {}
    sources: list[str] = []
    for prefix in pretrained_init_prefixes(model):
        module = model.get_submodule(prefix.rstrip('.')) if prefix else model
        for cfg in init_cfg_checkpoints(module):
            checkpoint = CheckpointLoader.load_checkpoint(
                cfg['checkpoint'], map_location='cpu', logger='current')
            sources.append(str(cfg['checkpoint']))
            state = state_dict_of(checkpoint)
            ckpt_prefix = cfg.get('prefix') or ''
            if ckpt_prefix and not ckpt_prefix.endswith('.'):
                ckpt_prefix += '.'
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                key = key[len('module.'):] if key.startswith('module.') else key
                if not key.startswith(ckpt_prefix):
                    continue
                name = prefix + key[len(ckpt_prefix):]
                if name in params and tuple(params[name].shape) == tuple(value.shape):
                    weights[name] = value
    return weights, sources
