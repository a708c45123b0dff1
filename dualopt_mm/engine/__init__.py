"""mmengine integration: the param-group constructor, the layer index and the hook.

Importing this module registers ``DualOptOptimWrapperConstructor`` in mmengine's root
``OPTIM_WRAPPER_CONSTRUCTORS`` and ``WeightRollbackHook`` in the root ``HOOKS``.
"""
from .constructor import DualOptOptimWrapperConstructor, DualOptOptions
from .hooks import IterationSeedHook, L2SPHook, NormEvalHook, WeightRollbackHook
from .layer_index import (
                          DEFAULT_RULES,
                          ArchitectureRule,
                          BlockPattern,
                          assign_blocks,
                          dense_layer_ids,
)

__all__ = [
    'DualOptOptimWrapperConstructor', 'DualOptOptions', 'WeightRollbackHook',
    'IterationSeedHook', 'L2SPHook', 'NormEvalHook',
    'ArchitectureRule', 'BlockPattern', 'DEFAULT_RULES', 'assign_blocks', 'dense_layer_ids'
]
