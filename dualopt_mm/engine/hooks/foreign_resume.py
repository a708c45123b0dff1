"""θ_0 on a resume from another optimizer's state (a stock AdamW run switched to DualOpt by
``--resume``): taken from the config's pretrained checkpoint, never from the resumed weights
(``WeightRollbackHook``)."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..pretrained import pretrained_weights
from ..strategies import StrategyAdapter
from .entries import is_annotated, refine_modes

__all__ = ['anchor_foreign_resume']


def anchor_foreign_resume(optimizer: torch.optim.Optimizer, model: nn.Module,
                          names: dict[int, str], adapter: StrategyAdapter,
                          refine: bool) -> bool:
    """On resume from the optimizer state of another optimizer (a stock AdamW run switched
    to DualOpt): θ_0 from the config's pretrained checkpoint, never the resumed weights.

    The resumed state has base-optimizer moments but no ``anchor`` for the reviewed
    fine-tuned tensors. Their θ_0 is read from ``init_cfg=Pretrained`` (``load_from`` is
    the resumed file itself); the reviewed set is refined to the tensors it holds. Without
    such a checkpoint the run stops, saying how to proceed. Returns whether the reviewed set
    changed (``refine``: ``refine_pretrained`` of the hook).
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}

    def unanchored() -> list[torch.Tensor]:
        return [p for p, layer_id, _, _ in optimizer.review_levels()
                if layer_id is not None and optimizer.state.get(p)
                and 'anchor' not in optimizer.state[p]
                and group_of[id(p)]['mode'] == 'finetune']

    missing = unanchored()
    if not missing:
        return False
    if adapter.sharded:
        raise NotImplementedError(
            f'the resumed optimizer state has no theta_0 for {len(missing)} fine-tuned '
            f'tensors (written by another optimizer?), and under '
            f'{adapter.name} this rank holds only slices of them, '
            'which the pretrained checkpoint cannot be matched to. Start a fresh DualOpt '
            'run from the pretrained weights instead of resuming')
    weights, sources = pretrained_weights(model)
    if not weights:
        raise RuntimeError(
            f'the resumed optimizer state has no theta_0 for {len(missing)} fine-tuned '
            f'tensors (e.g. {names.get(id(missing[0]), "?")}): it was written by another '
            f'optimizer (a stock run switched to DualOpt by resume?), and the config names '
            f'no pretrained checkpoint (init_cfg=dict(type=\'Pretrained\', ...)) to take '
            f'theta_0 from; anchoring to the resumed weights would roll back toward a '
            f'mid-training state. Add the pretrained checkpoint to the model\'s init_cfg, '
            f'or start a fresh DualOpt run with load_from=<pretrained checkpoint>.')
    changed = is_annotated(optimizer) and refine and refine_modes(optimizer, set(weights))
    missing = unanchored()
    without = [names.get(id(p), '?') for p in missing if names.get(id(p)) not in weights]
    if without:
        raise RuntimeError(
            f'the resumed optimizer state has no theta_0 and the pretrained checkpoints '
            f'{sources} hold no tensor for {len(without)} fine-tuned parameters '
            f'({", ".join(without[:5])}): set their mode to \'none\' (paramwise_cfg '
            f'custom_keys) or start a fresh DualOpt run with load_from=<pretrained>')
    optimizer.capture_anchors(values={p: weights[names[id(p)]] for p in missing})
    print_log(
        f'WeightRollbackHook: the resumed optimizer state had no theta_0 (written by '
        f'another optimizer): theta_0 of {len(missing)} tensors taken from '
        f'{", ".join(sources)}, not from the resumed weights', logger='current',
        level=logging.WARNING)
    return changed
