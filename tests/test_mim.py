"""``mim train`` with our configs and tools (OpenMMLab's launcher, run offline).

* ``mim train mmdet <path of our config>``: MMDetection's own train.py runs our Faster R-CNN
  DualOpt config (``custom_imports`` loads dualopt_mm).
* ``mim train dualopt_mm <config file name>``: mim locates the package with
  ``pkg_resources.get_distribution('dualopt_mm').location + '/dualopt_mm'``, finds the config by
  name under it (following the ``.mim/configs`` symlink) and runs ``.mim/tools/train.py``.
* The wheel carries ``dualopt_mm/.mim/{configs,tools}`` as real files (non-editable installs).

Each run trains one iteration on generated data, with validation skipped (``val_begin=2``).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from e2e_harness import REPO_ROOT, run_tool

pytestmark = pytest.mark.slow

OUR_MMDET_CONFIG = osp.join(REPO_ROOT, 'configs', 'faster_rcnn',
                            'faster-rcnn_r50_fpn_1x_coco_dualopt.py')
SMOKE_CONFIG = 'resnet18_dualopt_smoke.py'


@pytest.fixture(scope='module')
def mim_available(require_upstream):
    require_upstream('mim')


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    """Two 256x192 images: one training iteration at batch size 2."""
    from synthetic_data import make_coco_dataset
    return make_coco_dataset(str(tmp_path_factory.mktemp('mim_coco')), num_images=2,
                             num_val_images=1, image_size=(256, 192), num_classes=3, seed=1)


@pytest.fixture(scope='module')
def tiny_classification(tmp_path_factory):
    """Two 64x64 images (2 classes x 1): one training iteration at batch size 2."""
    from synthetic_data import make_classification_dataset
    return make_classification_dataset(str(tmp_path_factory.mktemp('mim_cls')),
                                       num_images_per_class=1, num_classes=2,
                                       image_size=(64, 64), seed=1)


def _loader_options(prefix: str, batch_size: int) -> list:
    return [f'{prefix}.batch_size={batch_size}', f'{prefix}.num_workers=0',
            f'{prefix}.persistent_workers=False']


def _assert_trained(work_dir: Path, checkpoint: str) -> None:
    assert (work_dir / checkpoint).is_file(), sorted(os.listdir(work_dir))
    logs = glob.glob(str(work_dir / '2*' / '2*.log'))
    assert logs, f'no log under {work_dir}'
    text = Path(logs[0]).read_text()
    assert '[1/1]' in text and 'loss:' in text, 'one logged training iteration'


def _require_engine_registered() -> None:
    """Our mmdet config needs the constructor and the hook that ``import dualopt_mm`` registers."""
    from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS

    import dualopt_mm  # noqa: F401

    if 'DualOptOptimWrapperConstructor' not in OPTIM_WRAPPER_CONSTRUCTORS \
            or 'WeightRollbackHook' not in HOOKS:
        pytest.skip('import dualopt_mm does not register the constructor and hook yet')


def test_mim_train_mmdet_with_our_config(mim_available, require_upstream, tiny_coco, tmp_path):
    require_upstream('mmdet')
    assert osp.isfile(OUR_MMDET_CONFIG)
    _require_engine_registered()
    work_dir = tmp_path / 'work_dir'
    classes = '[' + ','.join(tiny_coco.classes) + ']'
    options = ['model.backbone.init_cfg=None']  # no pretrained weights offline
    # The validation loop is built (not run: val_begin=2), so its data must exist too.
    for split, loader in (('train', 'train_dataloader'), ('val', 'val_dataloader')):
        dataset = f'{loader}.dataset'
        options += [
            f'{dataset}.data_root={tiny_coco.root}',
            f'{dataset}.ann_file=annotations/instances_{split}.json',
            f'{dataset}.data_prefix.img={split}/',
            f'{dataset}.metainfo.classes={classes}',
            *_loader_options(loader, 2 if split == 'train' else 1),
        ]
    options += [
        'train_dataloader.dataset.pipeline.2.scale=(256,192)',
        f'val_evaluator.ann_file={tiny_coco.paths["val_ann_file"]}',
        'train_cfg.max_epochs=1', 'train_cfg.val_begin=2',
        'default_hooks.logger.interval=1',
    ]
    run_tool(['python', '-m', 'mim', 'train', 'mmdet', OUR_MMDET_CONFIG, '--gpus', '0',
              '--work-dir', str(work_dir), '--cfg-options', *options],
             cwd=str(tmp_path), timeout=600)
    _assert_trained(work_dir, 'epoch_1.pth')


def test_mim_finds_our_package_tools_and_configs(mim_available):
    """What ``mim train dualopt_mm`` needs from the install (see the module docstring)."""
    from mim.utils import get_installed_path, recursively_find

    package_root = get_installed_path('dualopt_mm')
    assert osp.isfile(osp.join(package_root, '.mim', 'tools', 'train.py')), (
        f'mim looks for {package_root}/.mim/tools/train.py. A PEP 660 editable install '
        '(pip install -e .) leaves <site-packages>/dualopt_mm missing: install non-editable, '
        'or link <site-packages>/dualopt_mm to the checkout (tools/setup/setup_env.sh does).')
    found = recursively_find(package_root, SMOKE_CONFIG, followlinks=True)
    assert len(found) == 1, found


def test_mim_train_our_package_by_config_name(mim_available, require_upstream,
                                              tiny_classification, tmp_path):
    require_upstream('mmpretrain')
    work_dir = tmp_path / 'work_dir'
    options = [
        f'train_dataloader.dataset.data_root={tiny_classification.root}',
        f'val_dataloader.dataset.data_root={tiny_classification.root}',
        *_loader_options('train_dataloader', 2),
        *_loader_options('val_dataloader', 2),
        'train_cfg.max_epochs=1', 'train_cfg.val_begin=2',
        'default_hooks.logger.interval=1',
    ]
    # From an empty directory, so only the package can provide the config.
    result = run_tool(['python', '-m', 'mim', 'train', 'dualopt_mm', SMOKE_CONFIG, '--gpus', '0',
                       '--work-dir', str(work_dir), '--cfg-options', *options],
                      cwd=str(tmp_path), timeout=600)
    output = result.stdout + result.stderr
    assert "we find the config file in codebase dualopt_mm" in output
    assert osp.join('.mim', 'tools', 'train.py') in output, 'our train.py ran'
    _assert_trained(work_dir, 'epoch_1.pth')


def test_mim_train_upstream_script_resumes(mim_available, require_upstream, tiny_classification,
                                           tmp_path):
    """MMPretrain's own tools/train.py (``mim train mmpretrain``), our config importing
    dualopt_mm by ``custom_imports``: ``--resume`` reads the checkpoint under torch's
    ``weights_only=True`` through mmengine's loader, with nothing added to torch's safe list."""
    require_upstream('mmpretrain')
    config = osp.join(REPO_ROOT, 'configs', 'smoke', SMOKE_CONFIG)
    work_dir = tmp_path / 'work_dir'
    options = [
        f'train_dataloader.dataset.data_root={tiny_classification.root}',
        f'val_dataloader.dataset.data_root={tiny_classification.root}',
        *_loader_options('train_dataloader', 2),
        *_loader_options('val_dataloader', 2),
        'train_cfg.val_begin=3', 'default_hooks.logger.interval=1',
    ]
    for epochs, extra in ((1, []), (2, ['--resume'])):
        result = run_tool(['python', '-m', 'mim', 'train', 'mmpretrain', config, '--gpus', '0',
                           '--work-dir', str(work_dir), *extra, '--cfg-options', *options,
                           f'train_cfg.max_epochs={epochs}'], cwd=str(tmp_path), timeout=600)
    output = result.stdout + result.stderr
    assert 'resumed epoch: 1' in output, output[-3000:]
    assert osp.join('mmpretrain', '.mim', 'tools', 'train.py') in output, 'upstream train.py ran'
    assert (work_dir / 'epoch_2.pth').is_file()


def _source_copy(destination: Path) -> Path:
    """The checkout without .venv / .git / build outputs (symlinks kept)."""
    excluded = ('.venv', '.git', 'work_dirs', 'build', 'dist', '__pycache__', '.pytest_cache',
                '.ruff_cache')
    archive = destination / 'src.tar'
    with tarfile.open(archive, 'w') as tar:
        for entry in sorted(os.listdir(REPO_ROOT)):
            if entry in excluded or entry.endswith('.egg-info'):
                continue
            tar.add(osp.join(REPO_ROOT, entry), arcname=entry,
                    filter=lambda info: None if any(
                        part in excluded or part.endswith('.egg-info')
                        for part in Path(info.name).parts) else info)
    source = destination / 'src'
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter='tar')
    return source


def test_wheel_ships_mim_tools_and_configs(tmp_path):
    """A non-editable install gets real files under dualopt_mm/.mim (the symlinks resolved)."""
    source = _source_copy(tmp_path)
    out = tmp_path / 'wheel'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
         '-w', str(out), str(source)], capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = zipfile.ZipFile(next(out.glob('dualopt_mm-*.whl')))
    names = set(wheel.namelist())
    for tool in ('train.py', 'test.py', 'dist_train.sh', 'dist_test.sh', 'slurm_train.sh',
                 'data/generate_datasets.py'):
        assert f'dualopt_mm/.mim/tools/{tool}' in names, tool
    assert f'dualopt_mm/.mim/configs/smoke/{SMOKE_CONFIG}' in names
    configs = [n for n in names if n.startswith('dualopt_mm/.mim/configs/') and n.endswith('.py')]
    assert len(configs) == len(glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                                         recursive=True))
    assert not any(n.startswith('dualopt_mm/testing/') for n in names), 'no test support'
