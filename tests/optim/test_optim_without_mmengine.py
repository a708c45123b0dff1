"""The optimizers are plain PyTorch: importable and usable where mmengine is not installed."""
import json
import subprocess
import sys
import textwrap


def test_import_and_step_without_mmengine():
    code = textwrap.dedent('''
        import sys
        sys.modules['mmengine'] = None  # any `import mmengine...` now raises ImportError
        import torch
        import dualopt_mm
        from dualopt_mm import DualOptAdamW
        assert not any(name.startswith('mmengine') and module is not None
                       for name, module in sys.modules.items())
        assert 'WeightRollbackHook' not in dualopt_mm.__all__
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = DualOptAdamW([weight], lr=0.1, k_max=0.5)
        weight.grad = torch.ones(3)
        optimizer.step()
        print(weight.tolist())
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # AdamW step: θ̂ = 1·(1 − 0.1·0.01) − 0.1 = 0.899; review toward θ_0 = 1 with λ = 0.5
    # (single reviewed tensor: level k_max): θ = 0.899 + 0.5·(1 − 0.899) = 0.9495
    assert [round(v, 6) for v in json.loads(result.stdout)] == [0.9495] * 3
