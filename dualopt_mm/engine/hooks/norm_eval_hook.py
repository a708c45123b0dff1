"""``NormEvalHook``: keep the batch-norm layers of a (pretrained) backbone in eval mode.

mmdet / mmseg backbones offer ``norm_eval=True`` (BN running statistics frozen while the rest
trains, the usual choice when fine-tuning with a few images per GPU); wrapped third-party
backbones such as mmpretrain's ``TIMMBackbone`` do not. This hook does the same for any
module: before every training iteration it puts the ``_BatchNorm`` layers under ``prefixes``
in eval mode (mmengine calls ``model.train()`` at the start of training and after each
validation). Their affine weights still train unless frozen otherwise.

Config::

    custom_hooks = [dict(type='NormEvalHook')]                  # prefixes=('backbone.',)
"""
from __future__ import annotations

from collections.abc import Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.nn.modules.batchnorm import _BatchNorm


@HOOKS.register_module()
class NormEvalHook(Hook):
    """Put the batch-norm layers whose names start with ``prefixes`` in eval mode each iteration."""

    priority = 'VERY_HIGH'

    def __init__(self, prefixes: Sequence[str] = ('backbone.',)) -> None:
        self.prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm) and (name + '.').startswith(self.prefixes):
                module.eval()
