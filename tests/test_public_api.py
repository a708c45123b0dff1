"""The public names are API: every documented import, registry name and config key stays."""
from __future__ import annotations

import importlib
import inspect

import pytest

#: module -> names a user may import from it (README, docs/).
DOCUMENTED_IMPORTS = {
    'dualopt_mm': ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW',
                   'DualOptOptimWrapperConstructor', 'WeightRollbackHook', '__version__'],
    'dualopt_mm.optim': ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW', 'DualOptOptimizer',
                         'REVIEW_DEFAULTS', 'apply_review', 'layer_level', 'review_weight'],
    'dualopt_mm.engine': ['DualOptOptimWrapperConstructor', 'DualOptOptions',
                          'WeightRollbackHook', 'IterationSeedHook', 'L2SPHook', 'NormEvalHook',
                          'ArchitectureRule', 'BlockPattern', 'DEFAULT_RULES', 'assign_blocks',
                          'dense_layer_ids'],
    'dualopt_mm.compat': ['apply_all', 'enable_mmengine_checkpoint_loading',
                          'load_mmengine_checkpoint', 'patch_mmengine_for_cpu_ddp',
                          'is_cpu_ddp_patched'],
}

#: registry -> names registered in mmengine's root registry by ``import dualopt_mm``.
REGISTERED = {
    'OPTIMIZERS': ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW'],
    'OPTIM_WRAPPER_CONSTRUCTORS': ['DualOptOptimWrapperConstructor'],
    'HOOKS': ['WeightRollbackHook', 'IterationSeedHook', 'L2SPHook', 'NormEvalHook'],
}

#: the review hyper-parameters (optimizer kwargs, group keys, constructor and hook options)
REVIEW_KEYS = {'mode': 'finetune', 'k_max': 0.01, 'k_min': 0.0, 'gamma': 1.0,
               'k_unit': 'base_lr', 'reverse': False, 'skip_1d': None, 'layer_id': None,
               'num_layers': None, 'base_lr': None, 'anchor_dtype': None}


@pytest.mark.parametrize('module', sorted(DOCUMENTED_IMPORTS))
def test_documented_imports(module):
    imported = importlib.import_module(module)
    for name in DOCUMENTED_IMPORTS[module]:
        assert hasattr(imported, name), f'{module}.{name}'


@pytest.mark.parametrize('scope', [None, 'mmdet', 'mmseg', 'mmpretrain'])
def test_registered_names_resolve_in_every_scope(scope):
    import mmengine.registry as registries
    from mmengine.registry import DefaultScope

    import dualopt_mm  # noqa: F401

    if scope is not None:
        pytest.importorskip(scope)
        importlib.import_module(f'{scope}.registry')
    with DefaultScope.overwrite_default_scope(scope):
        for registry_name, names in REGISTERED.items():
            registry = getattr(registries, registry_name)
            for name in names:
                assert registry.get(name) is not None, (scope, registry_name, name)


def test_review_keys_and_defaults():
    from dualopt_mm.optim import REVIEW_DEFAULTS, DualOptAdam, DualOptAdamW, DualOptSGD

    assert REVIEW_DEFAULTS == REVIEW_KEYS
    import torch
    for cls in (DualOptSGD, DualOptAdam, DualOptAdamW):
        optimizer = cls([torch.zeros(2, requires_grad=True)], **REVIEW_KEYS)
        assert {k: optimizer.defaults[k] for k in REVIEW_KEYS} == REVIEW_KEYS
        with pytest.raises(TypeError, match="'k_maxx'.*did you mean 'k_max'"):
            cls([torch.zeros(2, requires_grad=True)], k_maxx=0.1)


def test_torch_kwargs_of_the_replaced_optimizers_are_accepted():
    """A stock config's ``type=`` can be swapped alone: every torch kwarg is accepted."""
    import torch

    from dualopt_mm.optim import DualOptAdam, DualOptAdamW, DualOptSGD

    for ours, theirs in ((DualOptSGD, torch.optim.SGD), (DualOptAdam, torch.optim.Adam),
                         (DualOptAdamW, torch.optim.AdamW)):
        ours_params = inspect.signature(ours.__init__).parameters
        for name in inspect.signature(theirs.__init__).parameters:
            if name in ('self', 'params'):
                continue
            assert name in ours_params, f'{ours.__name__} lacks torch kwarg {name!r}'


CONSTRUCTOR_KEYS = dict(mode='finetune', pretrained='auto', layer_index='block',
                        get_layer_index=None, swap_optimizer=True, base_constructor=None,
                        k_max=0.02, k_min=0.001, gamma=2.0, k_unit='absolute', reverse=True,
                        skip_1d=True, anchor_dtype='bfloat16')
HOOK_KEYS = dict(interval=10, review=False, check_lambda='warn', refine_pretrained=True,
                 write_levels=True, mode='finetune', pretrained='auto', layer_index='block',
                 k_max=0.02, k_min=0.001, gamma=2.0, k_unit='absolute', reverse=True,
                 skip_1d=True)


def test_constructor_and_hook_config_keys():
    """Every documented key of ``paramwise_cfg.dualopt`` and of the hook is accepted."""
    from dualopt_mm.engine import DualOptOptions, WeightRollbackHook

    options = DualOptOptions.from_cfg(CONSTRUCTOR_KEYS)
    assert options.optimizer_kwargs() == dict(k_max=0.02, k_min=0.001, gamma=2.0,
                                              k_unit='absolute', reverse=True, skip_1d=True,
                                              anchor_dtype='bfloat16')
    with pytest.raises(ValueError, match="did you mean 'k_max'"):
        DualOptOptions.from_cfg(dict(k_maxx=0.1))
    hook = WeightRollbackHook(**HOOK_KEYS)
    assert hook.settings['k_max'] == 0.02 and hook.settings['k_unit'] == 'absolute'
    with pytest.raises(TypeError, match="did you mean 'k_max'"):
        WeightRollbackHook(k_maxx=0.1)
