"""``import dualopt_mm`` weakens no safety check of ``torch.load(weights_only=True)``.

Each crafted checkpoint (``security_payloads.py``) is loaded in a fresh interpreter, with the
package imported, three ways: plain ``torch.load(weights_only=True)``, mmengine's own loader (what
resume and ``load_from`` call) and :func:`dualopt_mm.compat.load_mmengine_checkpoint`. Every
way must refuse it with an ``UnpicklingError`` (a crash would show as a negative exit code),
no marker file may appear, and ``HistoryBuffer``'s class-wide statistics must be intact. The
same files are then given to ``tools/train.py`` (``load_from`` and ``--resume``) and to
``mim train``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from e2e_harness import REPO_ROOT, run_tool
from security_payloads import PAYLOADS, write_payload
from torch_versions import needs_safe_globals, safe_global_names

_CHILD = r'''
import json, pickle, sys
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint
def names():  # torch < 2.5 has no process-wide safe list
    get = getattr(torch.serialization, 'get_safe_globals', lambda: [])
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
            for g in get()}
before = names()
import dualopt_mm
after = names()
ways = {
    'torch.load': lambda p: torch.load(p, weights_only=True),
    'mmengine': lambda p: _load_checkpoint(p, map_location='cpu'),
}
try:
    from dualopt_mm.compat import load_mmengine_checkpoint
    ways['dualopt_mm'] = lambda p: load_mmengine_checkpoint(p, map_location='cpu')
except ImportError:
    pass
# torch registers its own types (NestedTensor, DTensor, ...) as modules are imported; nothing
# else may appear
added = sorted(g for g in after - before if not g.startswith('torch.'))
for path in sys.argv[1:]:
    print('loading', path, flush=True)  # the last one printed is the culprit of a crash
    result = {'path': path, 'safe_globals_added': added}
    for how, load in ways.items():
        try:
            load(path)
            result[how] = 'loaded'
        except pickle.UnpicklingError as error:
            result[how] = 'refused: ' + str(error)
        except Exception as error:  # anything but a refusal is a finding
            result[how] = f'{type(error).__name__}: {error}'
    result['mean_of_1_3'] = float(HistoryBuffer([1, 3], [1, 1]).statistics('mean'))
    print('RESULT', json.dumps(result), flush=True)
'''


@pytest.fixture(scope='module')
def payload_results(tmp_path_factory) -> dict:
    """Every payload loaded three ways in one fresh interpreter: name -> result."""
    root = tmp_path_factory.mktemp('payloads')
    paths = {name: write_payload(name, str(root / f'{name}.pth'), str(root / f'{name}.pwned'))
             for name in PAYLOADS}
    result = run_tool(['python', '-c', _CHILD, *paths.values()], check=False, timeout=300)
    assert result.returncode == 0, (
        f'the loader process died with exit code {result.returncode} (negative: a signal)\n'
        f'{result.stdout[-2000:]}{result.stderr[-3000:]}')
    by_path = {}
    for line in result.stdout.splitlines():
        if line.startswith('RESULT '):
            record = json.loads(line[len('RESULT '):])
            by_path[record['path']] = record
    return {name: (by_path[path], root / f'{name}.pwned') for name, path in paths.items()}


@pytest.mark.parametrize('name', sorted(PAYLOADS))
def test_payload_is_refused_everywhere(name, payload_results):
    result, marker = payload_results[name]
    for how in ('torch.load', 'mmengine', 'dualopt_mm'):
        assert result.get(how, 'not run').startswith('refused'), (how, result.get(how))
    assert not marker.exists(), 'the payload ran code'
    assert result['mean_of_1_3'] == 2.0, 'HistoryBuffer statistics were rebound'
    assert result['safe_globals_added'] == []


@needs_safe_globals
def test_import_leaves_torch_safe_list_unchanged():
    """Only torch's own entries (registered as torch modules get imported) are there after
    ``import dualopt_mm`` and :func:`~dualopt_mm.compat.apply_all`."""
    code = ('import torch, dualopt_mm, dualopt_mm.compat; dualopt_mm.compat.apply_all(); '
            'print(sorted(n for n in (g[1] if isinstance(g, tuple) else g.__module__ '
            'for g in torch.serialization.get_safe_globals()) if not n.startswith("torch")))')
    result = run_tool(['python', '-c', code], timeout=300)
    assert result.stdout.strip().splitlines()[-1] == '[]'


def test_refusal_names_what_was_asked(tmp_path):
    from dualopt_mm.compat import load_mmengine_checkpoint

    before = safe_global_names()
    path = write_payload('out_of_bounds', str(tmp_path / 'oob.pth'), str(tmp_path / 'm'))
    with pytest.raises(Exception, match="numpy dtype 'V8'"):
        load_mmengine_checkpoint(path)
    assert safe_global_names() == before


# --------------------------------------------------------------------------- entry points
def _smoke_options(data_root: str) -> list:
    return [f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}',
            'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.persistent_workers=False',
            'train_cfg.max_epochs=1', 'train_cfg.val_begin=2']


def _assert_refused(result, marker: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode > 0, (
        f'exit code {result.returncode} (0: the file was accepted; negative: a crash)\n'
        f'{output[-3000:]}')
    # torch >= 2.5: torch's weights_only unpickler; older: dualopt_mm's allowlist unpickler
    assert re.search(r'UnpicklingError: (Weights only load failed|checkpoint )',
                     output), output[-3000:]
    assert not marker.exists()


@pytest.fixture(scope='module')
def smoke_data(tmp_path_factory):
    from synthetic_data import make_classification_dataset
    return make_classification_dataset(str(tmp_path_factory.mktemp('security_cls')),
                                       num_images_per_class=1, num_classes=2,
                                       image_size=(64, 64), seed=1)


SMOKE_CONFIG = os.path.join(REPO_ROOT, 'configs', 'smoke', 'resnet18_dualopt_smoke.py')


@pytest.mark.slow
@pytest.mark.parametrize('name,how', [('forged_pointer', 'load_from'),
                                      ('out_of_bounds', 'resume'),
                                      ('os_system', 'resume')])
def test_train_tool_refuses(name, how, smoke_data, require_upstream, tmp_path):
    require_upstream('mmpretrain')
    marker = tmp_path / 'pwned'
    path = write_payload(name, str(tmp_path / f'{name}.pth'), str(marker))
    options = _smoke_options(smoke_data.root)
    args = ['python', os.path.join(REPO_ROOT, 'tools', 'train.py'), SMOKE_CONFIG,
            '--work-dir', str(tmp_path / 'work')]
    if how == 'resume':
        args += ['--resume', path]
    else:
        options.append(f'load_from={path}')
    result = run_tool(args + ['--cfg-options', *options], cwd=str(tmp_path), check=False)
    _assert_refused(result, marker)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['history_buffer_rebinding', 'subprocess_popen'])
def test_mim_train_refuses(name, smoke_data, require_upstream, tmp_path):
    require_upstream('mim')
    require_upstream('mmpretrain')
    marker = tmp_path / 'pwned'
    path = write_payload(name, str(tmp_path / f'{name}.pth'), str(marker))
    result = run_tool(
        [sys.executable, '-m', 'mim', 'train', 'dualopt_mm', 'resnet18_dualopt_smoke.py',
         '--gpus', '0', '--work-dir', str(tmp_path / 'work'), '--resume', path,
         '--cfg-options', *_smoke_options(smoke_data.root)],
        cwd=str(tmp_path), check=False)
    _assert_refused(result, marker)
