#!/usr/bin/env python
"""Time ``step()`` of the DualOpt optimizers against torch's, on real detection/segmentation
parameter sets, and measure their optimizer-state memory.

Parameter sets (``--model``):

- ``mask_rcnn``: Mask R-CNN R50-FPN (``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``);
- ``upernet_swin``: UperNet Swin-T (``mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_
  8xb2-160k_ade20k-512x512.py``).

The models are built with mmengine ``Config.fromfile`` + ``MODELS.build`` with every
``init_cfg`` / ``pretrained`` removed (no download), and the param groups are made by mmengine's
``DefaultOptimWrapperConstructor`` with a ``paramwise_cfg`` (the config's own, or a neutral one),
so there is one param group per trainable tensor, as in an mmengine run.

Every optimizer gets its own copy of the parameters and the same random gradients; after
``--warmup`` steps, the steps are timed interleaved (one step of each optimizer per round, so a
change of machine load hits all alike) for ``--repeats`` rounds: the table gives the median
ms/step and the median of the per-round ratios. On CPU the clock is the process CPU time by
default (``--clock cpu``; steadier on a shared machine), on CUDA the wall clock with
synchronisation. With several threads on a loaded machine use ``--clock wall``: the CPU time
then counts the spinning of torch's OpenMP threads waiting for a core.
The DualOpt optimizers run with their defaults (``mode='finetune'``, every trainable tensor
reviewed: the worst case; a real fine-tuning run reviews only the backbone)::

    python tools/analysis/benchmark_optimizer.py --model all --repeats 10 --threads 1 2
    python tools/analysis/benchmark_optimizer.py --model upernet_swin --device cuda

Each family (AdamW, SGD with momentum) is timed as torch's optimizer with ``fused=True`` (the
yardstick: torch's fastest step) and ``foreach=True``, and DualOpt's with ``fused=True``,
``foreach=True`` and the loop (plus a bf16 anchor for AdamW). ``--threads 1 2`` repeats the
table at each thread count. Prints a markdown table: ms/step, the ratio to torch's fused step,
the bytes the step must move at least (AdamW 28 B, SGD 20 B per float32 parameter, plus the
anchor read for DualOpt) and the time that takes at the machine's copy bandwidth (the floor),
the optimizer-state memory in MB and as a multiple of the parameter memory.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import torch
from torch import nn

CONFIGS = {
    'mask_rcnn': ('mmdet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'),
    'upernet_swin': ('mmseg', 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-'
                              '160k_ade20k-512x512.py'),
}
# the optimizer family of each stock config; the other family uses these settings
SGD_KWARGS = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)
ADAMW_KWARGS = dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)


# ----------------------------------------------------------------------------------------------
# parameter sets


def _strip_init(cfg: Any) -> Any:
    """Remove ``init_cfg`` and ``pretrained`` everywhere in a model config (no download)."""
    if isinstance(cfg, dict):
        return {k: _strip_init(v) for k, v in cfg.items() if k not in ('init_cfg', 'pretrained')}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_strip_init(v) for v in cfg)
    return cfg


def build_real_model(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of a stock mmdet / mmseg config; returns (model, optim_wrapper cfg)."""
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    MMLogger.get_current_instance().setLevel(logging.ERROR)  # no per-tensor paramwise log
    scope, path = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:  # inherit it, as a user config does
        child = osp.join(tmp, f'{name}_benchmark.py')
        with open(child, 'w') as f:
            f.write(f'_base_ = {path!r}\n')
        cfg = Config.fromfile(child)
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model_cfg = ConfigDict(_strip_init(cfg.model.to_dict()))
    model = MODELS.build(model_cfg)
    return model, cfg.optim_wrapper.to_dict()


# ----------------------------------------------------------------------------------------------
# optimizers over one group per tensor


class ParamSet:
    """Makes fresh copies of one parameter set, grouped one tensor per param group."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self.model, optim_wrapper = build_real_model(name)
        self.model.to(device)
        # the config's own paramwise_cfg, or a neutral one: one group per tensor either way
        self.paramwise_cfg = optim_wrapper.get('paramwise_cfg') or dict(custom_keys={})
        self.source = f'{CONFIGS[name][1]} (built)'
        first = self.params_and_groups(dict(type='SGD', lr=0.01, weight_decay=0.0))[0]
        self.num_params = sum(p.numel() for p in first)
        self.num_tensors = len(first)
        self.param_bytes = sum(p.numel() * p.element_size() for p in first)
        gen = torch.Generator().manual_seed(0)
        self.grads = [torch.randn(p.shape, generator=gen).to(device) for p in first]

    def params_and_groups(self, optimizer_cfg: dict[str, Any]
                          ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Fresh trainable params, and param groups as mmengine's constructor makes them."""
        from mmengine.optim import DefaultOptimWrapperConstructor

        model = copy.deepcopy(self.model)
        constructor = DefaultOptimWrapperConstructor(
            dict(type='OptimWrapper', optimizer=dict(optimizer_cfg)),
            paramwise_cfg=self.paramwise_cfg)
        optimizer = constructor(model).optimizer
        groups = [dict(g) for g in optimizer.param_groups]
        params = [p for g in groups for p in g['params']]
        return params, groups

    def build(self, cls: type, kwargs: dict[str, Any]) -> tuple[torch.optim.Optimizer,
                                                                 list[torch.Tensor]]:
        """``cls`` over fresh params grouped as mmengine does (lr / weight_decay per group),
        with the shared random gradients attached."""
        params, groups = self.params_and_groups(
            dict(type='SGD', lr=kwargs['lr'], weight_decay=kwargs['weight_decay']))
        groups = [{k: v for k, v in g.items() if k in ('params', 'lr', 'weight_decay')}
                  for g in groups]
        optimizer = cls(groups, **kwargs)
        for p, grad in zip(params, self.grads):
            p.grad = grad
        return optimizer, params


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total


def time_steps(optimizers: dict[str, torch.optim.Optimizer], warmup: int, repeats: int,
               device: torch.device, clock: str, progress: Callable[[str], None]
               ) -> dict[str, list[float]]:
    """ms of each timed step of each optimizer, stepping them interleaved (one step of each
    per round). ``clock``: 'wall' (perf_counter, with CUDA synchronisation) or 'cpu'
    (process CPU time of all threads: steadier on a shared CPU machine)."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    timer = time.perf_counter if clock == 'wall' else time.process_time
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(warmup + repeats):
        for name, optimizer in optimizers.items():
            sync()
            start = timer()
            optimizer.step()
            sync()
            if r >= warmup:
                times[name].append((timer() - start) * 1e3)
        progress(f'round {r + 1}/{warmup + repeats}')
    return times


def _median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b: robust to load that changes from round to round."""
    return statistics.median(x / y for x, y in zip(a, b))


def step_bytes(family: str, param_set: ParamSet, anchor_bytes: int) -> int:
    """Bytes one step must move at least: AdamW reads p, g, m, v and writes p, m, v (28 B
    per float32 parameter), SGD with momentum reads p, g, b and writes p, b (20 B); the
    review adds one read of theta_0 (``anchor_bytes`` per parameter, 0 for torch)."""
    per_param = (28 if family == 'AdamW' else 20) + anchor_bytes
    return per_param * param_set.num_params


def copy_bandwidth(device: torch.device, clock: str, numel: int = 1 << 25,
                   repeats: int = 9) -> float:
    """Bytes per second of ``a.add_(b)`` on 128 MiB float32 tensors (two reads, one write),
    the fastest of ``repeats`` timed with the steps' clock: the streaming bandwidth the
    optimizer steps can reach at the current thread count."""
    a, b = torch.randn(numel, device=device), torch.randn(numel, device=device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    timer = time.perf_counter if clock == 'wall' else time.process_time
    times = []
    for _ in range(repeats):
        sync()
        start = timer()
        a.add_(b)
        sync()
        times.append(timer() - start)
    return 3 * numel * 4 / max(min(times), 1e-9)


def benchmark(param_set: ParamSet, warmup: int, repeats: int, clock: str,
              progress: Callable[[str], None]) -> list[dict[str, Any]]:
    try:
        from dualopt_mm.optim import DualOptAdamW, DualOptSGD
    except ImportError:  # run from a checkout without installing the package
        sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
        from dualopt_mm.optim import DualOptAdamW, DualOptSGD

    rows = []
    bandwidth = copy_bandwidth(param_set.device, clock)
    families = [
        ('AdamW', torch.optim.AdamW, DualOptAdamW, ADAMW_KWARGS),
        ('SGD', torch.optim.SGD, DualOptSGD, SGD_KWARGS),
    ]
    for family, torch_cls, our_cls, kwargs in families:
        ours = our_cls.__name__
        variants = {  # label: (class, kwargs, bytes of theta_0 per parameter)
            f'torch {family} (fused)': (torch_cls, dict(kwargs, fused=True), 0),
            f'torch {family} (foreach)': (torch_cls, dict(kwargs, foreach=True), 0),
            f'{ours} (fused)': (our_cls, dict(kwargs, fused=True), 4),
            f'{ours} (foreach)': (our_cls, dict(kwargs, foreach=True), 4),
            f'{ours} (loop)': (our_cls, dict(kwargs, foreach=False), 4),
        }
        if family == 'AdamW':
            variants[f'{ours} bf16 anchor (fused)'] = (
                our_cls, dict(kwargs, fused=True, anchor_dtype='bfloat16'), 2)
        optimizers = {}
        for label, (cls, cls_kwargs, _) in variants.items():
            progress(f'{param_set.name}: building {label}')
            optimizers[label] = param_set.build(cls, cls_kwargs)[0]
        times = time_steps(optimizers, warmup, repeats, param_set.device, clock,
                           lambda msg, f=family: progress(f'{param_set.name} {f}: {msg}'))
        base = times[f'torch {family} (fused)']
        for label, optimizer in optimizers.items():
            nbytes = state_bytes(optimizer)
            moved = step_bytes(family, param_set, variants[label][2])
            floor_ms = moved / bandwidth * 1e3
            ms = statistics.median(times[label])
            rows.append(dict(
                model=param_set.name, threads=torch.get_num_threads(), optimizer=label, ms=ms,
                vs_torch=_median_ratio(times[label], base), moved_mb=moved / 2**20,
                floor_ms=floor_ms, vs_floor=ms / floor_ms, state_mb=nbytes / 2**20,
                state_ratio=nbytes / param_set.param_bytes, bandwidth=bandwidth))
        del optimizers
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ['| model | threads | optimizer | ms/step | / torch fused | MB moved | floor ms '
             '| / floor | state MB | state / params |',
             '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f'| {r["model"]} | {r["threads"]} | {r["optimizer"]} | {r["ms"]:.1f} | '
                     f'{r["vs_torch"]:.2f} | {r["moved_mb"]:.0f} | {r["floor_ms"]:.1f} | '
                     f'{r["vs_floor"]:.2f} | {r["state_mb"]:.1f} | {r["state_ratio"]:.2f} |')
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=['mask_rcnn', 'upernet_swin', 'all'], default='all')
    parser.add_argument('--repeats', type=int, default=10, help='timed rounds (median)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, nargs='+', default=None,
                        help='torch.set_num_threads, one table block per value (e.g. 1 2)')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default=None,
                        help="'wall' (default on CUDA) or 'cpu': process CPU time (default on "
                             'CPU, steadier on a shared machine)')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.threads and min(args.threads) < 1:
        parser.error(f'--threads must be >= 1, got {min(args.threads)}')
    device = torch.device(args.device)
    clock = args.clock or ('cpu' if device.type == 'cpu' else 'wall')

    def progress(message: str) -> None:
        print(f'[benchmark] {message}', file=sys.stderr, flush=True)

    names = list(CONFIGS) if args.model == 'all' else [args.model]
    rows, sources = [], []
    for name in names:
        progress(f'{name}: building the parameter set')
        param_set = ParamSet(name, device)
        sources.append(f'- {param_set.source}: {param_set.num_tensors} trainable tensors '
                       f'(one param group each), {param_set.num_params / 1e6:.1f} M parameters, '
                       f'{param_set.param_bytes / 2**20:.0f} MB')
        for threads in args.threads or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            rows += benchmark(param_set, args.warmup, args.repeats, clock, progress)
        del param_set
    device_name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
                   else 'CPU')
    bandwidths = ', '.join(f'{r["bandwidth"] / 1e9:.1f} GB/s at {r["threads"]} thread(s)'
                           for r in {(r['model'], r['threads']): r for r in rows}.values())
    print(f'torch {torch.__version__}, {device_name}, {clock} clock, median of {args.repeats} '
          f'interleaved steps after {args.warmup} warm-up steps (ratios: median of per-round '
          f'ratios), random gradients, one param group per tensor; floor = bytes a step must '
          f'move / copy bandwidth ({bandwidths})\n')
    print('\n'.join(sources) + '\n')
    print(markdown(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
