"""docs/architecture.md's layout is the real tree: it cannot drift."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / 'docs' / 'architecture.md'


def _listed() -> dict[str, str]:
    text = DOC.read_text(encoding='utf-8')
    block = re.search(r'## Layout\n\n```text\n(.*?)```', text, re.S)
    assert block, 'docs/architecture.md has no ## Layout text block'
    rows = {}
    for line in block.group(1).splitlines():
        path, _, what = line.strip().partition(' ')
        assert what.strip(), f'no description for {path}'
        rows[path] = what.strip()
    return rows


def _tracked() -> list[str]:
    out = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    # the checkout's files, tracked or new (not yet committed) but not deleted
    return [p for p in out if (ROOT / p).exists()]


def test_every_listed_path_exists():
    for path in _listed():
        assert (ROOT / path).exists(), f'{path} is listed but does not exist'
        assert path.endswith('/') == (ROOT / path).is_dir() or path.endswith('.mim/'), path


def test_package_modules_tools_and_folders_are_listed():
    listed = set(_listed())
    tracked = _tracked()
    modules = [p for p in tracked if p.startswith('dualopt_mm/') and p.endswith('.py')
               and '/.mim/' not in p]
    tools = [p for p in tracked if p.startswith('tools/') and p.count('/') == 1
             and not p.endswith('.txt')]
    folders = {os.path.dirname(p) + '/' for p in tracked
               if p.split('/')[0] in ('configs', 'tools', 'projects', 'dualopt_mm')
               and p.count('/') >= 2 and '/.mim/' not in p and '_base_' not in p}
    folders = {f for f in folders if f.count('/') == 2 or f.startswith('dualopt_mm/')}
    top = {p.split('/')[0] + '/' for p in tracked if '/' in p and not p.startswith('.')}
    missing = sorted((set(modules) | set(tools) | folders | top) - listed)
    assert not missing, f'not in docs/architecture.md: {missing}'


def test_readme_is_a_front_door():
    """The README stays short (details live in docs/): at most 12,000 characters."""
    length = len((ROOT / 'README.md').read_text(encoding='utf-8'))
    assert length <= 12_000, f'README.md has {length} characters (at most 12,000)'
