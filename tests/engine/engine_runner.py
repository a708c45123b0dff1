"""A real mmengine Runner around the toy detector, for the engine tests.

A plain module (not conftest.py) so that processes spawned by the DDP test can import it by
name: two conftest modules (tests/ and tests/engine/) would shadow each other there.
"""
from typing import Any, Dict, List, Optional

import torch
from e2e_harness import unique_experiment_name
from engine_toys import ToyDetector
from mmengine.runner import Runner
from torch.utils.data import Dataset

import dualopt_mm.engine  # noqa: F401  (registers the constructor and the hook)
from dualopt_mm.compat import enable_mmengine_checkpoint_loading

SGD = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)


class ToyData(Dataset):
    """8 fixed samples of 3x8x8 images with binary labels."""

    def __init__(self, length: int = 8) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.inputs = torch.randn(length, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, 2, (length, ), generator=generator)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return dict(inputs=self.inputs[index], labels=self.labels[index])


def toy_model(seed: int = 0, backbone_init_cfg: Optional[dict] = None) -> ToyDetector:
    """The toy detector with a fixed random init."""
    torch.manual_seed(seed)
    return ToyDetector(backbone_init_cfg)


def make_toy_runner(work_dir: str,
                    model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[dict] = None,
                    constructor: Optional[str] = 'DualOptOptimWrapperConstructor',
                    paramwise_cfg: Optional[dict] = None,
                    hooks: Optional[List[dict]] = None,
                    max_iters: int = 4,
                    checkpoint_interval: int = 2,
                    load_from: Optional[str] = None,
                    resume: bool = False,
                    param_scheduler: Any = None,
                    launcher: str = 'none') -> Runner:
    """A real Runner (IterBasedTrainLoop, fixed batches, deterministic) on the toy data."""
    enable_mmengine_checkpoint_loading()
    optim_wrapper: Dict[str, Any] = dict(optimizer=dict(optimizer or SGD))
    if constructor is not None:
        optim_wrapper['constructor'] = constructor
    if paramwise_cfg is not None:
        optim_wrapper['paramwise_cfg'] = paramwise_cfg
    if param_scheduler is None:
        param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                                end=2),
                           dict(type='CosineAnnealingLR', T_max=8, by_epoch=False, begin=2,
                                end=10)]
    return Runner(
        model=model if model is not None else toy_model(),
        work_dir=work_dir,
        experiment_name=unique_experiment_name('engine_toy'),
        train_dataloader=dict(dataset=ToyData(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=optim_wrapper,
        param_scheduler=param_scheduler,
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks if hooks is not None else [dict(type='WeightRollbackHook',
                                                           interval=1)],
        randomness=dict(seed=0, deterministic=True),
        load_from=load_from,
        resume=resume,
        default_scope='mmengine',
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
    )


def hook_of(runner: Runner, hook_type: str = 'WeightRollbackHook'):
    """The runner's hook of ``hook_type``."""
    return next(h for h in runner.hooks if type(h).__name__ == hook_type)


def model_state(runner: Runner) -> Dict[str, torch.Tensor]:
    """A detached copy of the runner's model parameters."""
    return {k: v.detach().clone() for k, v in runner.model.named_parameters()}
