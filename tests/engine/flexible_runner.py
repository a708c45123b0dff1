"""mmengine ``FlexibleRunner`` around the toy detector, for the FSDP / DeepSpeed strategy tests.

A plain module (not conftest.py) so that the processes these tests spawn import it by name.
``spawn_ranks`` starts ``world_size`` gloo processes with the environment mmengine's
``launcher='pytorch'`` reads (what ``torchrun`` sets).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.multiprocessing as mp
from e2e_harness import unique_experiment_name
from engine_runner import ToyData, toy_model
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import FlexibleRunner

import dualopt_mm.engine  # noqa: F401  (registers the constructor and the hooks)
from dualopt_mm.compat import apply_all

ADAMW = dict(type='AdamW', lr=1e-2, weight_decay=0.05)
PARAMWISE = dict(dualopt=dict(k_max=0.2))
#: rank r of 2 reads samples r, r + 2, ... (DefaultSampler, no shuffle): one process reading
#: them in this order, two micro-batches per step, sees the same batches as the two ranks
INTERLEAVED = [0, 2, 1, 3, 4, 6, 5, 7]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    apply_all()
    fn(rank, *args)


def spawn_ranks(fn: Callable, args: Sequence[Any] = (), world_size: int = 2) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes (gloo, like torchrun)."""
    mp.spawn(_rank_entry, args=(world_size, free_port(), fn, tuple(args)), nprocs=world_size,
             join=True)


class InterleavedToyData(ToyData):
    """The toy samples in the order ``indices``."""

    def __init__(self, indices: Sequence[int] = INTERLEAVED) -> None:
        super().__init__()
        self.inputs, self.labels = self.inputs[list(indices)], self.labels[list(indices)]


@HOOKS.register_module()
class AnchorProbeHook(Hook):
    """Records, right after WeightRollbackHook's ``before_train``, each reviewed tensor's
    θ_0 as this rank holds it (a flat FSDP shard, a DeepSpeed partition, a whole tensor), by
    name."""

    priority = 'LOW'

    def __init__(self) -> None:
        self.anchors: Dict[str, torch.Tensor] = {}

    def before_train(self, runner) -> None:
        from dualopt_mm.engine.strategies import adapter_for
        optimizer = runner.optim_wrapper.optimizer
        optimizer = adapter_for(runner.model, optimizer).optimizer_of(optimizer)
        for group in optimizer.param_groups:
            for p in group['params']:
                anchor = optimizer.state.get(p, {}).get('anchor')
                if anchor is not None:
                    self.anchors[group['param_name']] = anchor.detach().clone()


def make_flexible_runner(work_dir: str,
                         strategy: Optional[dict] = None,
                         max_iters: int = 4,
                         checkpoint_interval: int = 2,
                         load_from: Optional[str] = None,
                         resume: bool = False,
                         optimizer: Optional[dict] = None,
                         paramwise_cfg: Optional[dict] = None,
                         accumulative_counts: int = 1,
                         dataset: Optional[torch.utils.data.Dataset] = None,
                         hooks: Optional[List[dict]] = None,
                         launcher: str = 'pytorch',
                         model: Optional[torch.nn.Module] = None) -> FlexibleRunner:
    """A FlexibleRunner (IterBasedTrainLoop, fixed batches of 2, constant lr) on the toy
    detector, the constructor's one-line switch and WeightRollbackHook(interval=1)."""
    optim_wrapper: Dict[str, Any] = dict(
        constructor='DualOptOptimWrapperConstructor', optimizer=dict(optimizer or ADAMW),
        paramwise_cfg=paramwise_cfg if paramwise_cfg is not None else PARAMWISE)
    if accumulative_counts > 1:
        optim_wrapper['accumulative_counts'] = accumulative_counts
    return FlexibleRunner(
        model=model if model is not None else toy_model(),
        work_dir=work_dir,
        experiment_name=unique_experiment_name('flexible_toy'),
        strategy=strategy,
        train_dataloader=dict(dataset=dataset if dataset is not None else ToyData(),
                              batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=optim_wrapper,
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks if hooks is not None else [
            dict(type='WeightRollbackHook', interval=1), dict(type='AnchorProbeHook')],
        randomness=dict(seed=0),
        load_from=load_from,
        resume=resume,
        default_scope='mmengine',
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
    )


def hook_of(runner, hook_type: str):
    """The runner's hook of ``hook_type``."""
    return next(h for h in runner.hooks if type(h).__name__ == hook_type)
