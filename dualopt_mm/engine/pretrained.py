"""Which tensors a checkpoint filled, and the pretrained weights a config names.

The pretrained tensors are the ones a checkpoint really filled: the keys of ``load_from`` (seen
in the hook's ``after_load_checkpoint``) and of every
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``, matched by name and shape as
mmengine's non-strict loading does. A ``Pretrained`` module none of whose parameter names
appear in its checkpoint (a backbone that converts foreign keys in its own ``init_weights``,
like mmdet's Swin with ``convert_weights=True``) counts as filled entirely, with a warning.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .constructor import is_pretrained_init, pretrained_init_prefixes

__all__ = ['checkpoint_tensors_shapes', 'filled_by_init_cfg', 'filled_names',
           'init_cfg_checkpoints', 'pretrained_weights', 'state_dict_of']


def checkpoint_tensors_shapes(state_dict: Dict[str, Any], prefix: str = '') -> Dict[str, tuple]:
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


def state_dict_of(checkpoint: Any) -> Dict[str, Any]:
    """The weights of a loaded checkpoint (``state_dict``, ``model`` or the dict itself)."""
    if not isinstance(checkpoint, dict):
        return {}
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def filled_names(model: nn.Module, load_from_shapes: Optional[Dict[str, tuple]]
                 ) -> Optional[Set[str]]:
    """Names of the parameters a checkpoint filled, or None when none is configured."""
    params = dict(model.named_parameters())
    filled: Set[str] = set()
    configured = False
    if load_from_shapes is not None:
        configured = True
        filled |= {n for n, p in params.items()
                   if load_from_shapes.get(n) == tuple(p.shape)}
    for prefix in pretrained_init_prefixes(model):
        configured = True
        module = model.get_submodule(prefix.rstrip('.')) if prefix else model
        filled |= filled_by_init_cfg(module, prefix)
    return filled if configured else None


def init_cfg_checkpoints(module: nn.Module) -> List[dict]:
    init_cfgs = module.init_cfg if isinstance(module.init_cfg, (list, tuple)) else [
        module.init_cfg]
    return [cfg for cfg in init_cfgs if is_pretrained_init(cfg)]


def filled_by_init_cfg(module: nn.Module, prefix: str) -> Set[str]:
    names = {n: tuple(p.shape) for n, p in module.named_parameters()}
    filled: Set[str] = set()
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


def pretrained_weights(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The tensors the config's ``init_cfg=Pretrained`` checkpoints hold, by model name
    (matched by name and shape), and the checkpoint paths read."""
    params = dict(model.named_parameters())
    weights: Dict[str, torch.Tensor] = {}
    sources: List[str] = []
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
