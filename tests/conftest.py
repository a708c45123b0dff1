"""Shared fixtures: generated datasets, e2e config building, tool runs and timing records.

Generated datasets are session-scoped (written once per test session into a temporary
directory). The end-to-end tests build configs with :func:`e2e_harness.build_e2e_config`
through the ``e2e_config`` fixture and run ``tools/train.py`` / ``tools/test.py`` in subprocesses.

Options:
    ``--e2e-optimizers {dualopt,stock,all}``: which optimizer variants the heavy end-to-end
    models (Mask R-CNN, UperNet) run with. Default ``dualopt`` (the stock baseline of the cheap
    ResNet-18 always runs).

The seconds per training iteration of each e2e run are printed at the end of the session
(and written as JSON to ``$DUALOPT_E2E_TIMINGS`` when that variable names a file).
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

# the data generators live beside their CLI (tools/data); test helpers are importable by name
_TOOLS_DATA = str(Path(__file__).resolve().parent.parent / 'tools' / 'data')
if _TOOLS_DATA not in sys.path:
    sys.path.insert(0, _TOOLS_DATA)

REPO_ROOT = Path(__file__).resolve().parents[1]

_TIMINGS: Dict[str, List[float]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        '--e2e-optimizers', choices=('dualopt', 'stock', 'all'), default='dualopt',
        help='optimizer variants of the heavy end-to-end models (default: dualopt)')


# --------------------------------------------------------------------------- availability


def module_available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def dualopt_optimizers_available() -> bool:
    """Whether ``import dualopt_mm`` works and registers the DualOpt optimizers."""
    if not module_available('dualopt_mm'):
        return False
    from mmengine.registry import OPTIMIZERS
    return all(name in OPTIMIZERS for name in ('DualOptSGD', 'DualOptAdam', 'DualOptAdamW'))


@pytest.fixture(scope='session')
def dualopt_available() -> bool:
    return dualopt_optimizers_available()


@pytest.fixture(scope='session')
def require_variant(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``require_variant('dualopt'|'stock')`` skips unless selected and importable.

    Heavy models call it; ``--e2e-optimizers`` selects the variants.
    """
    choice = request.config.getoption('--e2e-optimizers')
    selected = ('dualopt', 'stock') if choice == 'all' else (choice, )

    def require(variant: str) -> None:
        if variant not in selected:
            pytest.skip(f'{variant!r} variant not selected (--e2e-optimizers={choice})')
        if variant == 'dualopt' and not dualopt_optimizers_available():
            pytest.skip('dualopt_mm optimizers are not importable yet')

    return require


@pytest.fixture(scope='session')
def require_upstream() -> Callable[[str], None]:
    """``require_upstream('mmdet')`` skips the test when that package cannot be imported."""

    def require(package: str) -> None:
        if not module_available(package):
            pytest.skip(f'{package} is not installed')

    return require


# --------------------------------------------------------------------------- generated data


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('synthetic_data')


@pytest.fixture(scope='session')
def coco_data(synthetic_root: Path):
    """COCO instances: 4 train / 1 val images of 256x192, 4 classes (val is costly)."""
    from synthetic_data import make_coco_dataset
    return make_coco_dataset(str(synthetic_root / 'coco'), num_images=4, num_val_images=1,
                             image_size=(256, 192), num_classes=4, seed=0)


@pytest.fixture(scope='session')
def ade20k_data(synthetic_root: Path):
    """ADE20K: 4 train / 2 val images of 128x128, 150 classes."""
    from synthetic_data import make_ade20k_dataset
    return make_ade20k_dataset(str(synthetic_root / 'ade20k'), num_images=4, num_val_images=2,
                               image_size=(128, 128), num_classes=150, seed=0)


@pytest.fixture(scope='session')
def classification_data(synthetic_root: Path):
    """ImageNet-style folders: 6 classes x (4 train, 2 val) images of 64x64."""
    from synthetic_data import make_classification_dataset
    return make_classification_dataset(str(synthetic_root / 'classification'),
                                       num_images_per_class=4, num_val_images_per_class=2,
                                       num_classes=6, image_size=(64, 64), seed=0)


# --------------------------------------------------------------------------- e2e helpers


@pytest.fixture
def e2e_config(tmp_path: Path):
    """``e2e_config(model, data, length, optimizer=None, **cfg_options) -> (cfg, path)``.

    Builds a shrunk stock config (see ``e2e_harness.E2E_MODELS``) with its
    ``work_dir`` in the test's ``tmp_path`` and dumps it to ``tmp_path/<model>.py``.
    """
    from e2e_harness import build_e2e_config, dump_config

    def make(model: str, data, length: int, optimizer=None, **cfg_options):
        cfg = build_e2e_config(model, data, str(tmp_path / 'work_dir'), length,
                               optimizer=optimizer, cfg_options=cfg_options or None)
        return cfg, dump_config(cfg, str(tmp_path / f'{model}.py'))

    return make


#: checkpoint globals outside torch's defaults, per checkpoint written by an end-to-end run
#: (printed at the end of the session: the inventory behind dualopt_mm.compat.checkpoint)
CHECKPOINT_GLOBALS: Dict[str, List[str]] = {}


@pytest.fixture(scope='session')
def checkpoint_inspector() -> Callable[..., dict]:
    """``inspect(path, variant, expected_iter, label=None) -> checkpoint``.

    Checks that every global of the checkpoint outside torch's defaults is one that
    :mod:`dualopt_mm.compat.checkpoint` decodes, loads it with
    :func:`~dualopt_mm.compat.load_mmengine_checkpoint` (``weights_only=True``) and checks the
    iteration count and which optimizer wrote it: DualOpt groups carry ``mode``/``k_max`` and
    finetune mode stores each parameter's ``anchor`` (θ_0) in its state.
    """

    def inspect(path: str, variant: str, expected_iter: int, label: str = None) -> dict:
        from torch_versions import checkpoint_globals

        from dualopt_mm.compat import load_mmengine_checkpoint
        from dualopt_mm.compat.checkpoint import decoder_globals

        found = sorted(checkpoint_globals(path))
        CHECKPOINT_GLOBALS[label or os.path.relpath(path, os.path.dirname(
            os.path.dirname(os.path.dirname(path))))] = found
        decoded = {name for _, name in decoder_globals()}
        assert set(found) <= decoded, f'globals outside the decoders: {set(found) - decoded}'
        checkpoint = load_mmengine_checkpoint(path, map_location='cpu')
        assert checkpoint['meta']['iter'] == expected_iter
        assert {'state_dict', 'optimizer', 'message_hub'} <= set(checkpoint)
        groups = checkpoint['optimizer']['param_groups']
        states = checkpoint['optimizer']['state'].values()
        if variant == 'dualopt':
            assert all('mode' in g and 'k_max' in g for g in groups), groups[0].keys()
            if groups[0]['mode'] == 'finetune':
                assert any('anchor' in s for s in states)
        else:
            assert not any('k_max' in g for g in groups)
        return checkpoint

    return inspect


@pytest.fixture(scope='session')
def record_iteration_times() -> Callable[[str, List[float]], None]:
    """``record(name, seconds)``: keep per-iteration times for the end-of-session table."""

    def record(name: str, seconds: List[float]) -> None:
        _TIMINGS.setdefault(name, []).extend(float(s) for s in seconds)

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if CHECKPOINT_GLOBALS:
        terminalreporter.section('globals in the checkpoints of end-to-end runs (beyond torch)')
        for label, names in sorted(CHECKPOINT_GLOBALS.items()):
            terminalreporter.write_line(f'{label}: {", ".join(names) or "-"}')
    if not _TIMINGS:
        return
    rows = {}
    terminalreporter.section('end-to-end CPU seconds per training iteration')
    for name, times in sorted(_TIMINGS.items()):
        # The first iteration of a run pays for warm-up; the median is robust to it.
        rows[name] = {'iterations': len(times), 'median_s': statistics.median(times),
                      'mean_s': statistics.fmean(times), 'max_s': max(times)}
        terminalreporter.write_line(
            f'{name:<40} {len(times):>3} iters  median {rows[name]["median_s"]:.3f} s  '
            f'mean {rows[name]["mean_s"]:.3f} s  max {rows[name]["max_s"]:.3f} s')
    out = os.environ.get('DUALOPT_E2E_TIMINGS')
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
