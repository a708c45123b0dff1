"""End-to-end test harness: real upstream configs, shrunk, on generated data.

The helpers build an mmengine :class:`~mmengine.config.Config` from a stock config of an
installed OpenMMLab package (``mmdet::...``, ``mmseg::...``, ``mmpretrain::...``) and change
only what a CPU test run needs: image sizes, dataset paths and class counts, iteration counts,
logging intervals, no pretrained weights (offline), and the optimizer line. The model code
paths, data pipelines, metrics and training loops stay the upstream ones.

Runs go through the repository's own ``tools/train.py`` / ``tools/test.py`` in subprocesses
(:func:`run_tool`), the way users run them, and the logs are read back with
:func:`read_scalars` / :func:`read_test_metrics`.

This module needs mmengine (and the downstream package of the config); the data generators in
``tools/data/synthetic_data.py`` do not.
"""
from __future__ import annotations

import glob
import importlib.util
import itertools
import json
import math
import os
import os.path as osp
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from mmengine.config import Config, ConfigDict

#: Root of the checkout (``tests/`` is here).
REPO_ROOT = osp.dirname(osp.dirname(osp.realpath(__file__)))
#: Test helpers (this folder) and the data generators (``tools/data``), importable by name in
#: this process and in the tool subprocesses (:func:`tool_env`).
HELPER_PATHS = (osp.join(REPO_ROOT, 'tests'), osp.join(REPO_ROOT, 'tools', 'data'))
for _path in reversed(HELPER_PATHS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from synthetic_data import GeneratedDataset  # noqa: E402

_RUN_IDS = itertools.count()

__all__ = [
    'CycleResult',
    'E2EModel',
    'E2E_MODELS',
    'REPO_ROOT',
    'build_e2e_config',
    'default_num_threads',
    'dualopt_variant',
    'dump_config',
    'finite_metrics',
    'iteration_times',
    'read_scalars',
    'read_test_metrics',
    'resolve_config',
    'run_tool',
    'tool_env',
    'train_resume_test',
    'unique_experiment_name',
]

#: Environment variables that would weaken or bypass what the tests check.
_SCRUBBED_ENV = ('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', 'TORCH_FORCE_WEIGHTS_ONLY_LOAD')

_DUALOPT_NAMES = {'SGD': 'DualOptSGD', 'Adam': 'DualOptAdam', 'AdamW': 'DualOptAdamW'}


# --------------------------------------------------------------------------- config editing


def _pipelines(cfg: Config) -> Iterable[List[dict]]:
    """The dataloaders' pipelines and the top-level ``train_pipeline``/``test_pipeline``."""
    seen = set()
    candidates = [cfg.get(name, {}).get('dataset', {}).get('pipeline')
                  for name in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    candidates += [cfg.get('train_pipeline'), cfg.get('test_pipeline')]
    for pipeline in candidates:
        if isinstance(pipeline, list) and id(pipeline) not in seen:
            seen.add(id(pipeline))
            yield pipeline


def _set_transform(cfg: Config, transform_type: str, **values: Any) -> int:
    """Set ``values`` on every transform of type ``transform_type``; returns how many."""
    count = 0
    for pipeline in _pipelines(cfg):
        for transform in pipeline:
            if transform.get('type') == transform_type:
                transform.update(values)
                count += 1
    if count == 0:
        raise KeyError(f'no {transform_type!r} transform in the dataloader pipelines')
    return count


def _loaders(cfg: Config) -> Iterable[tuple]:
    for split, name in (('train', 'train_dataloader'), ('val', 'val_dataloader'),
                        ('val', 'test_dataloader')):
        if cfg.get(name):
            yield split, cfg[name]


def unique_experiment_name(prefix: str) -> str:
    """``<prefix>_<n>``, a new name per call: a Runner's DefaultScope, logger and visualizer are
    process-wide instances named ``<experiment_name>_<timestamp in seconds>``, and mmengine hands
    back an existing one, so two Runners of one name built within a second would share the
    first one's (e.g. mmseg's model looked up in mmpretrain's registry)."""
    return f'{prefix}_{next(_RUN_IDS)}'


def _common(cfg: Config, work_dir: str, train_batch_size: int, val_batch_size: int) -> None:
    """Settings every e2e run shares: work_dir, no workers, per-iteration logs, fixed seed."""
    cfg.work_dir = work_dir
    cfg.experiment_name = unique_experiment_name('e2e')
    for split, loader in _loaders(cfg):
        loader.batch_size = train_batch_size if split == 'train' else val_batch_size
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.default_hooks.logger.interval = 1
    # window_size=1: the logged 'time' is the time of that very iteration.
    cfg.log_processor = ConfigDict(cfg.get('log_processor', {}))
    cfg.log_processor.window_size = 1
    cfg.randomness = dict(seed=0, deterministic=False)
    cfg.env_cfg.cudnn_benchmark = False


def _shrink_mmdet_mask_rcnn(cfg: Config, data: GeneratedDataset) -> None:
    width, height = data.image_size
    model = cfg.model
    # R18 instead of R50 keeps the same code path (ResNet + FPN) at a quarter of the cost.
    model.backbone.depth = 18
    model.backbone.init_cfg = None  # no pretrained weights offline
    model.neck.in_channels = [64, 128, 256, 512]
    model.roi_head.bbox_head.num_classes = data.num_classes
    model.roi_head.mask_head.num_classes = data.num_classes
    _set_transform(cfg, 'Resize', scale=(width, height))
    for split, loader in _loaders(cfg):
        dataset = loader.dataset
        dataset.data_root = data.root
        dataset.ann_file = f'annotations/instances_{split}.json'
        dataset.data_prefix = dict(img=f'{split}/')
        dataset.metainfo = dict(classes=list(data.classes),
                                palette=[tuple(c) for c in data.palette])
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = data.paths['val_ann_file']


def _shrink_mmseg_upernet(cfg: Config, data: GeneratedDataset) -> None:
    side = min(data.image_size)
    cfg.model.pretrained = None  # no pretrained weights offline
    cfg.model.backbone.init_cfg = None
    # R18 instead of R50 (same ResNetV1c + UPerHead code path); mmseg's own
    # upernet_r18_*_ade20k config cannot be used: it lacks data_preprocessor.size and fails
    # in stack_batch ("only one of size and size_divisor should be valid").
    cfg.model.backbone.depth = 18
    cfg.model.decode_head.in_channels = [64, 128, 256, 512]
    cfg.model.auxiliary_head.in_channels = 256
    cfg.model.data_preprocessor.size = (side, side)
    # The top-level copies are unused after parsing; kept consistent for readers of the dump.
    if 'crop_size' in cfg:
        cfg.crop_size = (side, side)
    if cfg.get('data_preprocessor') is not None and 'size' in cfg.data_preprocessor:
        cfg.data_preprocessor.size = (side, side)
    if data.num_classes != cfg.model.decode_head.num_classes:
        raise ValueError(f'the ADE20K config has {cfg.model.decode_head.num_classes} classes, '
                         f'the generated data {data.num_classes}')
    # ADE20K's 4:1 resize box and square crops, at 1/4 of the stock 2048x512 / 512.
    _set_transform(cfg, 'RandomResize', scale=(4 * side, side))
    _set_transform(cfg, 'RandomCrop', crop_size=(side, side))
    _set_transform(cfg, 'Resize', scale=(4 * side, side))
    for split, loader in _loaders(cfg):
        ade_split = 'training' if split == 'train' else 'validation'
        loader.dataset.data_root = data.root
        loader.dataset.data_prefix = dict(img_path=f'images/{ade_split}',
                                          seg_map_path=f'annotations/{ade_split}')


def _shrink_mmpretrain_resnet(cfg: Config, data: GeneratedDataset) -> None:
    side = min(data.image_size)
    crop = side * 7 // 8  # ImageNet's 224 / 256
    cfg.model.head.num_classes = data.num_classes
    cfg.model.backbone.init_cfg = None
    if cfg.get('data_preprocessor') is not None:
        cfg.data_preprocessor.num_classes = data.num_classes
    _set_transform(cfg, 'RandomResizedCrop', scale=crop)
    _set_transform(cfg, 'ResizeEdge', scale=side)
    _set_transform(cfg, 'CenterCrop', crop_size=crop)
    for _, loader in _loaders(cfg):
        loader.dataset.data_root = data.root
        loader.dataset.metainfo = dict(classes=list(data.classes))


@dataclass(frozen=True)
class E2EModel:
    """A stock upstream config and how to shrink it for a CPU run on generated data."""

    base_config: str
    data_kind: str
    shrink: Callable[[Config, GeneratedDataset], None]
    by_epoch: bool
    train_batch_size: int
    val_batch_size: int = 1


#: The models of the end-to-end tests.
E2E_MODELS: Dict[str, E2EModel] = {
    'mask_rcnn': E2EModel('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'coco',
                          _shrink_mmdet_mask_rcnn, by_epoch=True, train_batch_size=2),
    'upernet': E2EModel('mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', 'ade20k',
                        _shrink_mmseg_upernet, by_epoch=False, train_batch_size=2),
    'resnet': E2EModel('mmpretrain::resnet/resnet18_8xb32_in1k.py', 'classification',
                       _shrink_mmpretrain_resnet, by_epoch=True, train_batch_size=4,
                       val_batch_size=4),
}


def resolve_config(name: str) -> str:
    """File path of ``'<package>::<path>'`` (the package's ``.mim/configs``) or of a path."""
    if '::' not in name:
        return name
    package, relative = name.split('::', 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f'{package} is not installed (needed for {name})')
    for location in spec.submodule_search_locations:
        for configs in (osp.join(location, '.mim', 'configs'), osp.join(location, 'configs')):
            path = osp.join(configs, relative)
            if osp.isfile(path):
                return path
    raise FileNotFoundError(f'{relative} is not among the configs of {package}')


def dualopt_variant(optimizer: Mapping[str, Any]) -> Dict[str, Any]:
    """The one-line change a user makes: ``SGD`` -> ``DualOptSGD`` etc., other kwargs kept."""
    optimizer = dict(optimizer)
    base = optimizer.get('type')
    if base not in _DUALOPT_NAMES:
        raise ValueError(f'no DualOpt counterpart of optimizer type {base!r}')
    optimizer['type'] = _DUALOPT_NAMES[base]
    return optimizer


def build_e2e_config(model: Union[str, E2EModel],
                     data: GeneratedDataset,
                     work_dir: str,
                     length: int,
                     optimizer: Union[None, str, Mapping[str, Any]] = None,
                     cfg_options: Optional[Mapping[str, Any]] = None) -> Config:
    """A stock config, shrunk for a short CPU run on ``data``.

    Args:
        model: A key of :data:`E2E_MODELS` or an :class:`E2EModel`.
        data: Generated data of the model's ``data_kind``.
        work_dir: Where the run writes logs and checkpoints.
        length: Training length: epochs for epoch-based configs, iterations otherwise.
            Validation and checkpoints happen at the end.
        optimizer: ``None`` or ``'stock'``: the config's optimizer; ``'dualopt'``: its DualOpt
            counterpart (:func:`dualopt_variant`) plus ``custom_imports=['dualopt_mm']``; a
            dict: replaces the optimizer (``_delete_`` semantics).
        cfg_options: Applied last, like ``--cfg-options``.
    """
    spec = E2E_MODELS[model] if isinstance(model, str) else model
    if data.kind != spec.data_kind:
        raise ValueError(f'{spec.base_config} needs {spec.data_kind!r} data, got {data.kind!r}')
    cfg = Config.fromfile(resolve_config(spec.base_config))
    spec.shrink(cfg, data)
    _common(cfg, work_dir, spec.train_batch_size, spec.val_batch_size)
    if spec.by_epoch:
        cfg.train_cfg.max_epochs = length
        cfg.train_cfg.val_interval = length
        cfg.default_hooks.checkpoint.interval = length
    else:
        cfg.train_cfg.max_iters = length
        cfg.train_cfg.val_interval = length
        cfg.default_hooks.checkpoint.interval = length
    if optimizer not in (None, 'stock'):
        if optimizer == 'dualopt':
            new_optimizer = dualopt_variant(cfg.optim_wrapper.optimizer)
        elif isinstance(optimizer, Mapping):
            new_optimizer = dict(optimizer)
        else:
            raise ValueError(f"optimizer must be None, 'stock', 'dualopt' or a dict, got "
                             f'{optimizer!r}')
        cfg.optim_wrapper.optimizer = ConfigDict(new_optimizer)
        cfg.custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    return cfg


def dump_config(cfg: Config, path: str) -> str:
    """Write ``cfg`` as a text config that ``tools/train.py`` can read; returns ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    cfg.dump(path)
    return path


# --------------------------------------------------------------------------- running the tools


def default_num_threads() -> int:
    """Threads per tool process: the idle cores (at least 1), unless OMP_NUM_THREADS is set.

    On a busy machine, OpenMP threads that outnumber the idle cores wait on each other: an
    UperNet R18 iteration measured 8-19 s with 2 threads and 4.5 s with 1 on 2 cores at load 7.
    """
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        idle = cores
    return max(1, min(cores, int(round(idle))))


def tool_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment of the tool subprocesses: this one, minus the weights-only switches.

    ``PYTHONPATH`` gets the repository root so the tools import this checkout.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    paths = [REPO_ROOT, *HELPER_PATHS] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                                         if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('OMP_NUM_THREADS', str(default_num_threads()))
    if extra:
        env.update(extra)
    return env


def run_tool(args: Sequence[str],
             cwd: Optional[str] = None,
             timeout: float = 600,
             env: Optional[Mapping[str, str]] = None,
             log_file: Optional[str] = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` (a tool command line; ``'python'`` means this interpreter).

    Output goes to ``log_file`` if given. With ``check``, a non-zero exit raises
    ``AssertionError`` with the command and the last 60 lines of output.
    """
    args = [sys.executable if a == 'python' else str(a) for a in args]
    result = subprocess.run(args, cwd=cwd, env=tool_env(env), capture_output=True, text=True,
                            timeout=timeout, check=False)
    output = result.stdout + result.stderr
    if log_file is not None:
        with open(log_file, 'w', encoding='utf-8') as f:
            f.write(output)
    if check and result.returncode != 0:
        tail = '\n'.join(output.splitlines()[-60:])
        raise AssertionError(f'command failed with exit code {result.returncode}:\n'
                             f'{" ".join(args)}\n--- output tail ---\n{tail}')
    return result


# --------------------------------------------------------------------------- reading logs


def _run_dirs(work_dir: str) -> List[str]:
    """Timestamped run directories of ``work_dir``, oldest first."""
    return sorted(d for d in glob.glob(osp.join(work_dir, '2*')) if osp.isdir(d))


def read_scalars(work_dir: str, run: int = -1) -> List[Dict[str, Any]]:
    """The ``vis_data/scalars.json`` records of one run (default: the latest)."""
    runs = [d for d in _run_dirs(work_dir) if osp.isfile(osp.join(d, 'vis_data', 'scalars.json'))]
    if not runs:
        raise FileNotFoundError(f'no vis_data/scalars.json under {work_dir}')
    with open(osp.join(runs[run], 'vis_data', 'scalars.json'), encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def read_test_metrics(work_dir: str) -> Dict[str, Any]:
    """The metrics ``tools/test.py`` logged in its latest run (``<run>/<run>.json``)."""
    for run in reversed(_run_dirs(work_dir)):
        path = osp.join(run, osp.basename(run) + '.json')
        if osp.isfile(path):
            with open(path, encoding='utf-8') as f:
                records = [json.loads(line) for line in f if line.strip()]
            if records:
                return records[-1]
    raise FileNotFoundError(f'no test metrics json under {work_dir}')


def iteration_times(records: Iterable[Mapping[str, Any]]) -> List[float]:
    """Seconds of each training iteration (records with ``loss`` and ``time``)."""
    return [float(r['time']) for r in records if 'loss' in r and 'time' in r]


def finite_metrics(record: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, float]:
    """``{key: value}`` for ``keys``; ``AssertionError`` if one is missing or not finite."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise AssertionError(f'metrics {missing} missing from {sorted(record)}')
    values = {}
    for key in keys:
        value = record[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AssertionError(f'metric {key} = {value!r} is not a finite number')
        values[key] = float(value)
    return values


# --------------------------------------------------------------------------- the full cycle


@dataclass
class CycleResult:
    """What :func:`train_resume_test` produced."""

    work_dir: str
    first_checkpoint: str
    final_checkpoint: str
    train_records: List[Dict[str, Any]]
    resume_records: List[Dict[str, Any]]
    test_metrics: Dict[str, Any]
    predictions: str
    outputs: Dict[str, str]

    @property
    def iteration_times(self) -> List[float]:
        """Seconds of every training iteration of both runs."""
        return iteration_times(self.train_records) + iteration_times(self.resume_records)

    @property
    def val_records(self) -> List[Dict[str, Any]]:
        """Validation records (no ``loss``) of both runs."""
        return [r for r in self.train_records + self.resume_records if 'loss' not in r]


def train_resume_test(config_path: str,
                      work_dir: str,
                      by_epoch: bool,
                      length: int,
                      resumed_length: int,
                      timeout: float = 600,
                      run_test: bool = True,
                      test_args: Sequence[str] = ()) -> CycleResult:
    """Train, resume to a longer schedule, and test, each through the repository's tools.

    1. ``tools/train.py CFG`` for ``length`` epochs/iterations (validates and saves at the end);
    2. ``tools/train.py CFG --resume`` (latest checkpoint in ``work_dir``) with the length raised
       to ``resumed_length``; checked to continue from the saved iteration;
    3. ``tools/test.py CFG <final checkpoint> --out predictions.pkl`` plus ``test_args``
       (skipped when ``run_test`` is false: ``test_metrics`` is then empty).

    The subprocesses run without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (see :func:`tool_env`), so
    steps 2 and 3 load checkpoints with torch's ``weights_only=True`` default.
    """
    if resumed_length <= length:
        raise ValueError(f'resumed_length ({resumed_length}) must exceed length ({length})')
    train, test = osp.join(REPO_ROOT, 'tools', 'train.py'), osp.join(REPO_ROOT, 'tools', 'test.py')
    unit = 'epoch' if by_epoch else 'iter'
    length_key = 'train_cfg.max_epochs' if by_epoch else 'train_cfg.max_iters'
    os.makedirs(work_dir, exist_ok=True)
    outputs: Dict[str, str] = {}

    first = run_tool(['python', train, config_path, '--work-dir', work_dir], timeout=timeout,
                     log_file=osp.join(work_dir, 'train_stdout.log'))
    outputs['train'] = first.stdout + first.stderr
    first_checkpoint = osp.join(work_dir, f'{unit}_{length}.pth')
    if not osp.isfile(first_checkpoint):
        raise AssertionError(f'training saved no {osp.basename(first_checkpoint)} in {work_dir}: '
                             f'{sorted(os.listdir(work_dir))}')
    train_records = read_scalars(work_dir)

    resumed = run_tool(['python', train, config_path, '--work-dir', work_dir, '--resume',
                        '--cfg-options', f'{length_key}={resumed_length}',
                        f'train_cfg.val_interval={resumed_length}'],
                       timeout=timeout, log_file=osp.join(work_dir, 'resume_stdout.log'))
    outputs['resume'] = resumed.stdout + resumed.stderr
    if f'Auto resumed from the latest checkpoint {first_checkpoint}' not in outputs['resume'] \
            or 'resumed epoch:' not in outputs['resume']:
        raise AssertionError(f'the second run did not resume from {first_checkpoint}')
    final_checkpoint = osp.join(work_dir, f'{unit}_{resumed_length}.pth')
    if not osp.isfile(final_checkpoint):
        raise AssertionError(f'the resumed run saved no {osp.basename(final_checkpoint)}')
    resume_records = read_scalars(work_dir)
    first_steps = [r['step'] for r in train_records if 'loss' in r]
    resumed_steps = [r['step'] for r in resume_records if 'loss' in r]
    if not resumed_steps or min(resumed_steps) <= max(first_steps):
        raise AssertionError(f'resumed iterations {resumed_steps} do not continue after '
                             f'{max(first_steps)}')

    test_dir = osp.join(work_dir, 'test')
    predictions = osp.join(test_dir, 'predictions.pkl')
    test_metrics: Dict[str, Any] = {}
    if run_test:
        tested = run_tool(['python', test, config_path, final_checkpoint, '--work-dir', test_dir,
                           '--out', predictions, *test_args], timeout=timeout,
                          log_file=osp.join(work_dir, 'test_stdout.log'))
        outputs['test'] = tested.stdout + tested.stderr
        if not osp.isfile(predictions):
            raise AssertionError(f'tools/test.py --out wrote no {predictions}')
        test_metrics = read_test_metrics(test_dir)
    return CycleResult(work_dir, first_checkpoint, final_checkpoint, train_records,
                       resume_records, test_metrics, predictions, outputs)
