"""DeepSpeed ZeRO stage 1 / 2 (mmengine's ``DeepSpeedStrategy``): what a flat partition holds,
θ_0 on it, the settings that cannot be right there (refused at build time), drift over ranks.

How DeepSpeed 0.19.6 runs a torch optimizer under ZeRO-1/2 (read off
``deepspeed/runtime/zero/stage_1_and_2.py`` and checked by ``tests/engine/test_deepspeed.py``):
each param group is flattened into one buffer (padded to a multiple of the world size),
split into equal partitions, and rank r keeps partition r as a new fp32 1-d tensor; the
group's ``params`` become ``[that partition]``, its other keys are kept, and ``step()`` is
called once per group with ``param_groups`` set to that group alone. So with
:class:`~dualopt_mm.engine.constructor.DualOptOptimWrapperConstructor` (one tensor per group):

- the partition of group g on rank r is elements ``[r·P, (r+1)·P)`` of tensor g flattened
  (P = the group's partition size; the last rank's tail is padding, zeros in θ and θ_0);
- ``mode``, ``layer_id``, ``num_layers``, the levels and lr ratios travel with the group, so
  every element is reviewed at its tensor's level; θ_0 (``anchor``) is captured on the fp32
  partition after ``init_cfg=Pretrained`` loaded the weights, and saved per rank with the
  rest of the optimizer state (DeepSpeed's ``zero_pp_rank_*`` files): resume is exact;
- refused: ``skip_1d`` (a partition is 1-d whatever the tensor's rank), ZeRO stage 3 (the
  parameters are partitioned by a different code path, untested), ``elastic_checkpoint``
  (DeepSpeed restores every group's state with the keys of group 0, but θ_0 exists only in
  reviewed groups), and an ``optimizer`` entry in the DeepSpeed config naming a DualOpt type
  (DeepSpeed builds that from its own names; DualOpt goes in ``optim_wrapper.optimizer``).

DeepSpeed refuses an optimizer it has not tested unless ``zero_allow_untested_optimizer``
is set; :func:`check_deepspeed_strategy` sets it for DualOpt's optimizers, which are tested
here, and says so. mmengine's ``DeepSpeedStrategy.load_checkpoint`` reads DeepSpeed checkpoint
folders only: pretrained weights come through ``init_cfg=dict(type='Pretrained', ...)``.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from .ddp import StrategyAdapter, all_reduce_sum, refuse_skip_1d

__all__ = ['DeepSpeedAdapter', 'check_deepspeed_strategy', 'is_deepspeed_optimizer',
           'is_deepspeed_strategy']

#: The ZeRO stages DualOpt is verified with.
ZERO_STAGES = (0, 1, 2)


def is_deepspeed_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is one of DeepSpeed's ZeRO wrappers (no deepspeed import)."""
    return type(optimizer).__module__.startswith('deepspeed.') and hasattr(optimizer,
                                                                           'optimizer')


def is_deepspeed_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` (a FlexibleRunner's) is mmengine's ``DeepSpeedStrategy``."""
    return any(cls.__name__ == 'DeepSpeedStrategy' for cls in type(strategy).__mro__)


def check_deepspeed_strategy(strategy: Any, mode: str, skip_1d: Optional[bool],
                             dualopt_type: Optional[str]) -> None:
    """Refuse, before iteration 0, the DeepSpeed settings DualOpt cannot run right (module
    docstring), and allow DeepSpeed to run the DualOpt optimizer ``dualopt_type`` (None:
    the optimizer is not DualOpt's, DeepSpeed decides)."""
    from mmengine.logging import print_log
    config = strategy.config
    inner = (config.get('optimizer') or {}).get('type')
    if isinstance(inner, str) and inner.startswith('DualOpt'):
        raise ValueError(
            f"DeepSpeed config optimizer type {inner!r}: DeepSpeed builds config['optimizer'] "
            "from its own names only (Adam, AdamW, Lamb, ...). Remove it and name the DualOpt "
            f"optimizer in the mmengine config: optim_wrapper=dict(optimizer=dict(type="
            f"'{inner}', ...), constructor='DualOptOptimWrapperConstructor')")
    zero = config.get('zero_optimization') or {}
    stage = zero.get('stage', 0)
    if stage not in ZERO_STAGES:
        raise NotImplementedError(
            f'DualOpt under DeepSpeed ZeRO stage {stage!r}: verified with stages 1 and 2 '
            f'(zero_optimization=dict(stage=1) or dict(stage=2)); stage 3 partitions the '
            'parameters themselves and is not supported. For sharded parameters use '
            "FSDPStrategy(model_wrapper=dict(use_orig_params=True))")
    if zero.get('elastic_checkpoint'):
        raise NotImplementedError(
            'DualOpt under DeepSpeed with zero_optimization.elastic_checkpoint=True: '
            "DeepSpeed restores every param group's state with the keys of the first group, "
            'but theta_0 (anchor) exists only in reviewed groups, so it would be lost or '
            'misplaced on resume. Set elastic_checkpoint=False (the default) and resume '
            'with the same number of ranks')
    refuse_skip_1d('DeepSpeed', mode, skip_1d, 'one flat 1-d partition per param group')
    if dualopt_type is not None and not config.get('zero_allow_untested_optimizer'):
        config['zero_allow_untested_optimizer'] = True
        print_log(f'DeepSpeedStrategy: zero_allow_untested_optimizer=True for {dualopt_type} '
                  '(DualOpt optimizers are verified under ZeRO-1/2: one step per param group '
                  'on its flat partition)', logger='current', level=logging.INFO)


class DeepSpeedAdapter(StrategyAdapter):
    """DeepSpeed ZeRO-1/2: each rank holds one flat fp32 partition per param group."""

    name = 'DeepSpeed ZeRO'
    sharded = True

    def optimizer_of(self, optimizer: Any) -> torch.optim.Optimizer:
        """The torch optimizer inside DeepSpeed's ZeRO wrapper (its groups hold partitions)."""
        return optimizer.optimizer

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values)

    def check_hook(self, review: bool, foreign: bool) -> None:
        if foreign:
            raise NotImplementedError(
                'WeightRollbackHook under DeepSpeed with an optimizer that is not DualOpt\'s: '
                "the hook would keep theta_0 of this rank's flat partitions, which DeepSpeed's "
                'checkpoint (client state, saved by rank 0) cannot restore on the other '
                "ranks. Use a DualOpt optimizer: optim_wrapper=dict(constructor="
                "'DualOptOptimWrapperConstructor')")

    def check_groups(self, optimizer: torch.optim.Optimizer, annotated: bool) -> None:
        if not annotated:
            raise NotImplementedError(
                f'{type(optimizer).__name__} under DeepSpeed without the param groups of '
                'DualOptOptimWrapperConstructor: DeepSpeed flattens each param group into one '
                'partition, so per-tensor layer levels and the pretrained/new split are lost. '
                "Use optim_wrapper=dict(constructor='DualOptOptimWrapperConstructor')")

    @staticmethod
    def partition_slices(optimizer: Any) -> dict[str, tuple[int, int]]:
        """``param_name -> (start, numel)``: which elements of its (flattened) tensor this
        rank's partition of each one-tensor group holds (padding excluded)."""
        import torch.distributed as dist
        rank = dist.get_rank(optimizer.dp_process_group)
        slices = {}
        for group, size, bit16 in zip(optimizer.optimizer.param_groups,
                                      optimizer.partition_size, optimizer.bit16_groups):
            numel = sum(p.numel() for p in bit16)
            start = rank * int(size)
            slices[group['param_name']] = (start, max(0, min(int(size), numel - start)))
        return slices
