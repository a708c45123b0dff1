r"""The per-parameter state of a DualOpt optimizer beyond torch's: the anchors :math:`\theta_0`
(lazy capture, :meth:`~StateMixin.capture_anchors`, the refusal to anchor mid-training weights)
and the rules for loading a checkpoint (saved review settings win, missing keys stay, shapes
and dtypes checked)."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from .groups import dtype_of, first_few, group_label, param_label
from .hyperparams import REVIEW_DEFAULTS, anchor_dtype_name

__all__ = ['StateMixin']

# how to compute, not what: kept from the current groups when a checkpoint is loaded
_PATH_KEYS = ('foreach', 'fused')


class StateMixin:
    """The anchors and checkpoint part of :class:`~dualopt_mm.optim.base.DualOptOptimizer`
    (a mixin of it)."""

    param_groups: list[dict[str, Any]]
    state: Any
    defaults: dict[str, Any]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, with four DualOpt rules.

        - Keys of the current groups that the saved groups lack are kept (a checkpoint of
          torch's AdamW has no ``mode`` / ``layer_id`` / ``k_max``: the constructor's values
          stay, instead of the optimizer defaults).
        - Review hyper-parameters saved in the checkpoint win over the current ones (resume
          continues the saved run, as torch does for ``lr``); where they differ, a warning
          names them and the way to change them.
        - The path (``foreach``, ``fused``) stays this optimizer's: it says how to compute,
          not what, so a checkpoint of the fused path resumes on the loop and back.
        - Every state tensor must have its parameter's shape (a changed model, e.g. a head
          resized from 2 to 3 classes, fails here, naming the tensor and both shapes).
        """
        current = [dict(group) for group in self.param_groups]
        saved_groups = state_dict.get('param_groups', [])
        if len(saved_groups) != len(current):
            raise ValueError(
                f'the loaded optimizer state has {len(saved_groups)} param groups, this '
                f'optimizer {len(current)}: it was written for another model or grouping '
                f'(mmengine makes one group per tensor whenever paramwise_cfg is set, as '
                f'DualOptOptimWrapperConstructor does, and a single group otherwise). To '
                f'switch a running experiment to DualOpt, give the old config the same '
                f'paramwise_cfg before its last checkpoint, or start the DualOpt run from the '
                f'weights with load_from=<checkpoint> instead of resume')
        differing = []
        for gi, (now, saved) in enumerate(zip(current, saved_groups)):
            for key in REVIEW_DEFAULTS:
                if key in saved and key in now and now[key] is not None \
                        and saved[key] != now[key] and key != 'base_lr':
                    differing.append(f'{group_label(now, gi)}: {key}={saved[key]!r} in the '
                                     f'checkpoint, {now[key]!r} now')
        super().load_state_dict(state_dict)
        for group, now, saved in zip(self.param_groups, current, saved_groups):
            for key, value in now.items():
                if key == 'params':
                    continue
                if key not in saved or key in _PATH_KEYS:
                    group[key] = value
        self._update_amp_scaling()
        self._invalidate_levels()
        if differing:
            shown = first_few(differing, 5)
            warnings.warn(
                f'DualOpt: the loaded optimizer state keeps its own review settings, which '
                f'differ from the configured ones: {shown}. To continue with the new values, '
                f'set them on optimizer.param_groups after loading, or start a new run from '
                f'the weights (load_from) instead of resuming.', stacklevel=2)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._check_loaded_state(state['state'], state['param_groups'])
        super().__setstate__(state)
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            group['anchor_dtype'] = anchor_dtype_name(group['anchor_dtype'])
            anchor_dtype = dtype_of(group['anchor_dtype'])
            for p in group['params']:
                p_state = self.state.get(p)
                if not p_state:
                    continue
                anchor = p_state.get('anchor')
                # Optimizer.load_state_dict casts floating state to the param dtype: restore
                # the low-precision anchor (exact: the cast was a widening one).
                if anchor is not None and anchor.dtype != (anchor_dtype or p.dtype):
                    p_state['anchor'] = anchor.to(anchor_dtype or p.dtype)
                step = p_state.get('step')
                if isinstance(step, Tensor) and step.device.type != 'cpu':
                    # a checkpoint of a capturable/fused torch optimizer: keep the step count
                    # on the host so reading it never synchronises the device
                    p_state['step'] = step.to('cpu', torch.float32)
        self._invalidate_levels()

    @staticmethod
    def _check_loaded_state(state: dict[Any, Any], param_groups: list[dict[str, Any]]) -> None:
        """Every per-parameter state tensor but the step count has its parameter's shape."""
        for gi, group in enumerate(param_groups):
            for pi, p in enumerate(group['params']):
                p_state = state.get(p) if isinstance(p, Tensor) else None
                for key, value in (p_state or {}).items():
                    if key == 'step' or (key != 'anchor' and not isinstance(value, Tensor)):
                        continue
                    if value is None and key == 'anchor':
                        continue
                    if not isinstance(value, Tensor) or value.shape != p.shape:
                        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                        what = 'an anchor (theta_0)' if key == 'anchor' else f'a {key!r}'
                        raise ValueError(
                            f'the loaded optimizer state has {what} of shape {shape} for '
                            f'{param_label(group, gi, pi)}, whose shape is now '
                            f'{tuple(p.shape)}: the checkpoint was written for another model '
                            f'(a resized head?). Resume only with the model that wrote it; to '
                            f'reuse its weights in a changed model, start a new run with '
                            f'load_from=<checkpoint> instead of resume')

    @staticmethod
    def _new_anchor(p: Tensor, group: dict[str, Any]) -> Tensor:
        """A copy of ``p`` (a parameter or the value to anchor it to) in the anchor dtype."""
        dtype = dtype_of(group['anchor_dtype']) or p.dtype
        return p.detach().to(dtype=dtype, copy=True, memory_format=torch.preserve_format)

    @torch.no_grad()
    def capture_anchors(self, params: Optional[Iterable[Tensor]] = None,
                        values: Optional[Mapping[Tensor, Tensor]] = None) -> int:
        r"""Store the current value of the reviewed finetune-mode tensors as :math:`\theta_0`.

        Overrides anchors captured before (lazily at a first step, or by an earlier call).
        ``WeightRollbackHook`` calls it at ``before_train``, after the pretrained weights are
        loaded, unless the run resumes (then the anchors come from the checkpoint).

        Args:
            params: restrict to these tensors (each must belong to the optimizer); ``None``:
                every reviewed tensor of every ``mode='finetune'`` group.
            values: :math:`\theta_0` to store instead of the current value, by tensor (e.g.
                read from a pretrained checkpoint); every captured tensor must have one, of
                its shape.

        Returns:
            The number of anchors captured.
        """
        self._ensure_levels()
        wanted = None
        if values is not None and params is None:
            params = list(values)
        if params is not None:
            wanted = {id(p) for p in params}
            known = {id(p) for g in self.param_groups for p in g['params']}
            if not wanted <= known:
                raise ValueError(f'capture_anchors: {len(wanted - known)} of the given tensors '
                                 f'are not parameters of this optimizer')
        count = 0
        for gi, (group, group_levels) in enumerate(zip(self.param_groups, self._levels)):
            if group['mode'] != 'finetune':
                continue
            for pi, (p, level) in enumerate(zip(group['params'], group_levels)):
                if level is None or (wanted is not None and id(p) not in wanted):
                    continue
                if values is not None and p not in values:
                    raise ValueError(f'capture_anchors: no value given for '
                                     f'{param_label(group, gi, pi)} (values must cover every '
                                     f'tensor in params)')
                source = p if values is None else values[p]
                if source.shape != p.shape:
                    raise ValueError(f'capture_anchors: the value given for '
                                     f'{param_label(group, gi, pi)} has shape '
                                     f'{tuple(source.shape)}, the tensor {tuple(p.shape)}')
                self.state[p]['anchor'] = self._new_anchor(
                    source.to(device=p.device, dtype=p.dtype), group)
                count += 1
        return count

    def _check_anchor_source(self, p: Tensor, group: dict[str, Any], group_index: int,
                             param_index: int) -> None:
        """Refuse to anchor lazily a tensor that was trained before without an anchor.

        Its state then comes from another optimizer (a checkpoint of torch's AdamW resumed
        under DualOpt) and its current value is a mid-training weight, not theta_0.
        """
        state = self.state.get(p)
        if not state or state.get('anchor') is not None:
            return
        raise RuntimeError(
            f'{param_label(group, group_index, param_index)} has optimizer state from earlier '
            f'steps ({", ".join(sorted(map(str, state)))}) but no theta_0 (\'anchor\'): the '
            f'state was loaded from a checkpoint written by another optimizer (e.g. a stock '
            f'AdamW run resumed with DualOpt), so its current value is a mid-training weight, '
            f'not the pretrained one. Add WeightRollbackHook to the config (on resume it takes '
            f'theta_0 from the pretrained checkpoint the config names: init_cfg=Pretrained or '
            f'load_from), or start the DualOpt run fresh from the pretrained weights, or call '
            f'optimizer.capture_anchors() to anchor to the current weights on purpose.')
