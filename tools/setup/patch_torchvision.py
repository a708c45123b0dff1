"""Make the PyPI torchvision wheel importable next to a CPU build of torch.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. Its compiled ops cannot load beside
CPU torch 2.13 (harmless here: mmcv provides nms / RoIAlign), but
``torchvision/_meta_registrations.py`` then fails at import time, because two of its
decorators, ``torch.library.register_fake("torchvision::nms")`` and ``("torchvision::qnms")``,
are not guarded by ``torchvision.extension._has_ops()`` as the other registrations are.

This script guards exactly those two decorators. It is idempotent (a marker line records the
patch), touches nothing when torchvision imports already, and prints what it did.
"""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

MARKER = '# dualopt_mm: register_fake guarded by _has_ops()'
GUARD = f'''
{MARKER}
def _register_fake_if_ops(op_name):
    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(op_name)(fn)
        return fn

    return wrapper

'''
DECORATOR = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)', re.M)


def torchvision_imports() -> bool:
    result = subprocess.run([sys.executable, '-c', 'import torchvision'], capture_output=True)
    return result.returncode == 0


def main() -> int:
    spec = importlib.util.find_spec('torchvision')
    if spec is None or spec.origin is None:
        print('torchvision is not installed: nothing to patch')
        return 0
    path = Path(spec.origin).parent / '_meta_registrations.py'
    source = path.read_text()
    if MARKER in source:
        print(f'{path}: already patched')
    elif torchvision_imports():
        print('torchvision imports as it is: nothing to patch')
        return 0
    else:
        patched, count = DECORATOR.subn(r'@_register_fake_if_ops("torchvision::\1")', source)
        if count == 0:
            print(f'{path}: the unguarded register_fake decorators were not found; '
                  'this torchvision version needs a different fix', file=sys.stderr)
            return 1
        anchor = 'def register_meta('
        patched = patched.replace(anchor, GUARD.lstrip('\n') + '\n' + anchor, 1)
        path.write_text(patched)
        print(f'{path}: guarded {count} register_fake decorators (nms, qnms)')
    if not torchvision_imports():
        print('torchvision still fails to import after the patch', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
