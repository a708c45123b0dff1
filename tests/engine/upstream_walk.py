"""Upstream configs under the one-line switch: build the stock optimizer and the switched one on
the same model (random init, no weights) and compare them tensor by tensor.

A plain module (not a conftest) shared by the walking test and by hand-run surveys.
"""
import logging
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Tuple

import torch
from e2e_harness import unique_experiment_name
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import dualopt_mm.engine  # noqa: F401

PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')


def config_root(package: str) -> str:
    module = __import__(package)
    return osp.join(osp.dirname(module.__file__), '.mim', 'configs')


def switched_config(path: str, work_dir: str) -> Config:
    """The config of ``path`` with the README's one-line switch (and dualopt_mm appended to the
    config's own ``custom_imports``)."""
    base = Config.fromfile(path)
    imports = (base.get('custom_imports') or {}).get('imports', [])
    imports = ([imports] if isinstance(imports, str) else list(imports)) + ['dualopt_mm']
    child = osp.join(work_dir, 'switched.py')
    with open(child, 'w') as f:
        f.write(f'_base_ = {path!r}\n'
                f'custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n'
                "optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')\n")
    return Config.fromfile(child)


def build_runner(cfg: Config, work_dir: str) -> Runner:
    """A Runner of ``cfg`` on CPU (model built, nothing loaded, no data read)."""
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.experiment_name = unique_experiment_name('upstream_walk')  # every config is switched.py
    cfg.launcher = 'none'
    cfg.pop('visualizer', None)
    cfg.default_hooks = dict(cfg.get('default_hooks') or {})
    cfg.default_hooks.pop('visualization', None)
    cfg.pop('custom_hooks', None)
    cfg.optim_wrapper = cpu_optim_wrapper(cfg.optim_wrapper)
    return Runner.from_cfg(cfg)


def cpu_optim_wrapper(optim_wrapper: dict) -> dict:
    """``AmpOptimWrapper`` asserts a GPU: the plain wrapper (param groups are the same)."""
    optim_wrapper = optim_wrapper.copy()
    if optim_wrapper.get('type') == 'AmpOptimWrapper':
        optim_wrapper['type'] = 'OptimWrapper'
        optim_wrapper.pop('loss_scale', None)
        optim_wrapper.pop('dtype', None)
    return optim_wrapper


def per_tensor(optimizer: torch.optim.Optimizer) -> Dict[int, Tuple[float, float]]:
    """``id(param) -> (lr, weight_decay)`` of every tensor the optimizer steps."""
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            if p.requires_grad:
                out[id(p)] = (group['lr'], group.get('weight_decay', 0.0))
    return out


def compare(path: str, tmp_dir: Optional[str] = None,
            log_handler: Optional[logging.Handler] = None) -> dict:
    """Stock vs switched optimizer of the upstream config ``path`` on one Runner's model.

    Returns a dict: ``names`` (trainable tensor names), ``stock`` / ``switched`` per-tensor
    (lr, wd) by name, ``groups`` (the switched param groups), ``optimizer`` (switched).
    """
    tmp_dir = tmp_dir or tempfile.mkdtemp()
    cfg = switched_config(path, tmp_dir)
    stock_cfg = Config.fromfile(path)
    runner = build_runner(cfg, tmp_dir)
    if log_handler is not None:
        runner.logger.addHandler(log_handler)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        stock = runner.build_optim_wrapper(cpu_optim_wrapper(stock_cfg.optim_wrapper)).optimizer
        switched = runner.build_optim_wrapper(cpu_optim_wrapper(cfg.optim_wrapper)).optimizer
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    names = {id(p): n for n, p in model.named_parameters()}
    stock_t = {names[i]: v for i, v in per_tensor(stock).items()}
    switched_t = {names[i]: v for i, v in per_tensor(switched).items()}
    return dict(names=[n for n, p in model.named_parameters() if p.requires_grad],
                stock=stock_t, switched=switched_t, groups=switched.param_groups,
                optimizer=switched, runner=runner)


def differences(result: dict) -> List[str]:
    """Tensors whose lr or weight decay differ between the stock and the switched build."""
    stock, switched = result['stock'], result['switched']
    out = [f'{n}: stock {stock.get(n)} switched {switched.get(n)}'
           for n in sorted(set(stock) | set(switched)) if stock.get(n) != switched.get(n)]
    return out
