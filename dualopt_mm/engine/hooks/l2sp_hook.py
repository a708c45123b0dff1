r"""``L2SPHook``: the L2-SP regulariser (a penalty toward the pretrained weights), a hook.

L2-SP (Li, Grandvalet, Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018) adds :math:`\frac{\alpha}{2}\lVert\theta-\theta_0\rVert^2`
over the pretrained tensors to the loss. Its gradient :math:`\alpha(\theta-\theta_0)` is what
this hook adds, so it is the loss-term form exactly, with any optimizer (SGD, AdamW, ...):
the penalty's gradient goes through the optimizer like the task gradient (with Adam it is
normalised, unlike DualOpt's review step, which acts on the weights after the update).

Mechanism. mmengine has no hook point between ``backward()`` and ``step()``, so at
``before_train`` (after ``init_cfg=Pretrained`` / ``load_from`` filled the model; see
``WeightRollbackHook``) the hook stores θ_0 of every trainable parameter whose name starts
with one of ``prefixes`` and registers a tensor gradient hook on it that returns
``grad + alpha * (θ − θ_0)``. It therefore acts once per ``backward()``; with gradient
accumulation over ``n`` micro-batches mmengine scales each loss by ``1/n``, and the penalty is
added ``n`` times unscaled, so set ``alpha / n`` there. Gradient clipping sees the sum (as with
a loss term). The paper's second term (plain L2 on the new layers, β) is left to the
optimizer's ``weight_decay``. A parameter that gets no gradient in an iteration gets no penalty.

θ_0 is saved in checkpoints under the key ``l2sp_anchor`` and restored on resume (not
re-captured from mid-training weights).

Config::

    custom_hooks = [dict(type='L2SPHook', alpha=0.01)]           # prefixes=('backbone.',)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class L2SPHook(Hook):
    """Add ``alpha * (θ − θ_0)`` to the gradient of the pretrained tensors (L2-SP).

    Args:
        alpha: strength α of the penalty ``α/2 ‖θ − θ_0‖²`` (``alpha >= 0``; 0 turns it off).
        prefixes: parameter-name prefixes of the pretrained tensors (default the backbone).
    """

    priority = 'NORMAL'

    def __init__(self, alpha: float = 0.01, prefixes: Sequence[str] = ('backbone.',)) -> None:
        if not alpha >= 0:
            raise ValueError(f'L2SPHook: alpha must be >= 0, got {alpha!r}')
        if isinstance(prefixes, str):
            prefixes = (prefixes,)
        self.alpha = float(alpha)
        self.prefixes = tuple(prefixes)
        self.anchors: dict[str, torch.Tensor] = {}
        self._loaded: Optional[dict[str, torch.Tensor]] = None
        self._handles: list = []

    def _named_targets(self, runner) -> dict[str, torch.nn.Parameter]:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return {n: p for n, p in model.named_parameters()
                if p.requires_grad and n.startswith(self.prefixes)}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'l2sp_anchor' in checkpoint:
            self._loaded = checkpoint['l2sp_anchor']

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['l2sp_anchor'] = {n: a.clone() for n, a in self.anchors.items()}

    def before_train(self, runner) -> None:
        targets = self._named_targets(runner)
        resumed = bool(getattr(runner, '_resume', False)) and self._loaded is not None
        for name, param in targets.items():
            if resumed and name in self._loaded:
                anchor = self._loaded[name].to(param.device, param.dtype)
            else:
                anchor = param.detach().clone()
            self.anchors[name] = anchor
            if self.alpha > 0:
                self._handles.append(param.register_hook(self._grad_hook(param, anchor)))
        print_log(f'L2SPHook: alpha={self.alpha} on {len(targets)} tensors '
                  f'({sum(p.numel() for p in targets.values())} values) with prefixes '
                  f'{list(self.prefixes)}; θ_0 {"from the checkpoint" if resumed else "captured"}',
                  logger='current')

    def _grad_hook(self, param: torch.Tensor, anchor: torch.Tensor):
        alpha = self.alpha

        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad + alpha * (param.detach() - anchor)

        return hook

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
