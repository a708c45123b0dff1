"""The per-tensor level report shared by the constructor (log table) and the hook (JSON file).

One row per tensor of the optimizer, with the keys of ``<log_dir>/dualopt_levels.json``
(docs/integration.md): ``name``, ``block``, ``layer_id``, ``num_layers``, ``level``, ``lr``,
``weight_decay``, ``mode``; the constructor's rows add ``order``, where the block order comes
from (``'timm group_matcher'``, ``'mmpretrain get_layer_depth'``, ``'rule: ResNet'``,
``'generic'``: :class:`~dualopt_mm.engine.layer_index.BlockIndex`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ..optim.hyperparams import REVIEW_DEFAULTS
from ..optim.levels import layer_level, skips_1d

__all__ = ['format_table', 'group_level', 'level_rows', 'review_setting', 'skips_tensor']

def review_setting(group: Mapping[str, Any], key: str,
                   fallback: Optional[Mapping[str, Any]] = None) -> Any:
    """A review key of ``group``: the group's value, else ``fallback``'s, else the optimizers'
    default (:data:`dualopt_mm.optim.hyperparams.REVIEW_DEFAULTS`)."""
    if key in group:
        return group[key]
    if fallback is not None and key in fallback:
        return fallback[key]
    return REVIEW_DEFAULTS[key]


def skips_tensor(group: Mapping[str, Any], ndim: int,
                 fallback: Optional[Mapping[str, Any]] = None) -> bool:
    """Whether ``skip_1d`` exempts a tensor of ``ndim`` dimensions in ``group`` from review."""
    return skips_1d(review_setting(group, 'skip_1d', fallback),
                    review_setting(group, 'mode', fallback), ndim)


def group_level(group: Mapping[str, Any],
                fallback: Optional[Mapping[str, Any]] = None) -> Optional[float]:
    """The level k_i of a reviewed group with a layer id, else None."""
    mode = review_setting(group, 'mode', fallback)
    layer_id, num_layers = group.get('layer_id'), group.get('num_layers')
    if mode == 'none' or layer_id is None or num_layers is None:
        return None
    return layer_level(layer_id, num_layers,
                       k_max=review_setting(group, 'k_max', fallback),
                       k_min=review_setting(group, 'k_min', fallback),
                       gamma=review_setting(group, 'gamma', fallback),
                       reverse=review_setting(group, 'reverse', fallback))


def level_rows(groups: Iterable[Mapping[str, Any]],
               fallback: Optional[Mapping[str, Any]] = None,
               lr_key: str = 'lr') -> list[dict[str, Any]]:
    """One row per tensor of ``groups`` (param groups annotated by the constructor).

    Args:
        groups: the optimizer's param groups.
        fallback: where review keys missing from a group come from (the optimizer's
            ``defaults`` or the hook's settings).
        lr_key: the group key reported as ``lr`` (``'initial_lr'`` once schedulers exist, so
            the file shows the base lr rather than the first warm-up value).
    """
    rows = []
    for group in groups:
        names = group.get('param_name')
        params = group['params']
        for position, param in enumerate(params):
            if isinstance(names, str) and len(params) == 1:
                name = names
            else:
                name = f'<group tensor {position}>'
            level = group_level(group, fallback)
            if level is not None and skips_tensor(group, param.ndim, fallback):
                level = None
            rows.append(dict(
                name=name,
                block=group.get('block'),
                order=group.get('index_source'),
                layer_id=group.get('layer_id'),
                num_layers=group.get('num_layers'),
                level=level,
                lr=group.get(lr_key, group.get('lr')),
                weight_decay=group.get('weight_decay'),
                mode=review_setting(group, 'mode', fallback),
            ))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a fixed-width text table for the log (an ``order`` column when a row has
    one)."""
    with_order = any(row.get('order') for row in rows)
    header = ('name', 'block', *(('order',) if with_order else ()), 'layer', 'level', 'lr',
              'weight_decay', 'mode')

    def cell(value: Any) -> str:
        if value is None:
            return '-'
        if isinstance(value, float):
            return f'{value:.4g}'
        return str(value)

    lines = [header]
    for row in rows:
        layer = ('-' if row['layer_id'] is None else
                 f'{row["layer_id"]}/{row["num_layers"] - 1}')
        order = (cell(row.get('order')),) if with_order else ()
        lines.append((row['name'], cell(row['block']), *order, layer, cell(row['level']),
                      cell(row['lr']), cell(row['weight_decay']), row['mode']))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return '\n'.join('  '.join(text.ljust(w) for text, w in zip(line, widths)).rstrip()
                     for line in lines)
