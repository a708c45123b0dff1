"""Param-group helpers of the DualOpt optimizers: labels for messages, the checks of torch's
flags and ``lr``, and :class:`ReviewBatch`, the tensors that share one call of a functional
(loop, foreach or fused)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = ['FOREIGN_GROUP_KEYS', 'ParamsT', 'ReviewBatch', 'check_flags', 'check_lr',
           'first_few', 'group_label', 'param_label', 'reviews_itself']

# Keys of a param group that are not hyper-parameters of the optimizer but are legitimately
# there (torch, mmengine, the constructor); a key close to a hyper-parameter name and not
# in this list or the defaults is refused as a typo.
FOREIGN_GROUP_KEYS = ('params', 'param_names', 'param_name', 'initial_lr', 'reference',
                      'reference_step', 'block_index', 'block_name', 'differentiable',
                      'capturable', 'fused', 'decoupled_weight_decay')

ParamsT = Union[Iterable[Tensor], Iterable[dict[str, Any]]]


def check_flags(*, capturable: Any = False, differentiable: Any = False, fused: Any = None,
                foreach: Any = None) -> None:
    """Refuse torch flags DualOpt does not implement (``capturable``, ``differentiable``:
    ``False`` / ``None`` are accepted so stock configs can swap ``type=`` alone) and, as
    torch does, ``fused=True`` with ``foreach=True``."""
    for name, value in (('capturable', capturable), ('differentiable', differentiable)):
        if value not in (None, False):
            raise ValueError(
                f'{name}={value!r} is not supported by the DualOpt optimizers (accepted: False '
                f'or None); they have foreach and fused implementations instead')
    if fused not in (None, False, True):
        raise ValueError(f'fused={fused!r} must be None, False or True')
    if fused and foreach:
        raise ValueError('fused=True and foreach=True cannot be set together (as in torch): '
                         'choose one of the two paths')


def check_lr(lr: Any, where: str = '') -> None:
    """torch's learning-rate check, plus: a Tensor lr is refused (DualOpt's fused path takes
    the lr as a float per group and needs no tensor for it)."""
    if isinstance(lr, Tensor):
        raise ValueError(f'lr as a Tensor is not supported by the DualOpt optimizers; pass a '
                         f'float{where}')
    if not 0.0 <= lr:
        raise ValueError(f'Invalid learning rate: {lr}{where}')


def dtype_of(name: Optional[str]) -> Optional[torch.dtype]:
    """The ``torch.dtype`` of an ``anchor_dtype`` name (``None`` stays ``None``)."""
    return None if name is None else getattr(torch, name)


def reviews_itself(optimizer: Any) -> bool:
    """Whether an optimizer (or its class) applies the review step itself: the DualOpt
    optimizers and wrappers around them (``DualOptZeroRedundancyOptimizer``) do."""
    return callable(getattr(optimizer, 'capture_anchors', None))


def first_few(items: list[str], count: int) -> str:
    """``'a; b; ... (7 in all)'``: the first ``count`` items of a message list."""
    more = f'; ... ({len(items)} in all)' if len(items) > count else ''
    return '; '.join(items[:count]) + more


def group_label(group: dict[str, Any], index: int) -> str:
    """``"param group 3 ('backbone.conv1.weight')"``: the index and, when the constructor
    wrote it, the tensor's name."""
    name = group.get('param_name')
    return f'param group {index} ({name!r})' if isinstance(name, str) else f'param group {index}'


def param_label(group: dict[str, Any], group_index: int, param_index: int) -> str:
    """The name of one tensor of a group for messages: ``param_name`` (mmengine constructor),
    torch's ``param_names``, else its position."""
    name = group.get('param_name')
    if isinstance(name, str) and len(group['params']) == 1:
        return f'{name!r} (param group {group_index})'
    names = group.get('param_names')
    if isinstance(names, (list, tuple)) and param_index < len(names):
        return f'{names[param_index]!r} (param group {group_index})'
    return f'parameter {param_index} of param group {group_index}'


class ReviewBatch:
    """Tensors that share one call of a functional: one set of static hyper-parameters and one
    path (loop, foreach or fused). Subclasses add the lists of their base optimizer's state."""

    __slots__ = ('group', 'path', 'params', 'grads', 'lrs', 'weight_decays', 'anchors',
                 'review_weights')

    def __init__(self, group: dict[str, Any], path: str = 'loop') -> None:
        self.group = group  # first group of the batch: source of the static hyper-parameters
        self.path = path  # 'loop', 'foreach' or 'fused'
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.lrs: list[float] = []
        self.weight_decays: list[float] = []
        self.anchors: list[Optional[Tensor]] = []  # a per tensor; None: a = 0 or no review
        self.review_weights: list[float] = []  # lambda per tensor; 0: no review


