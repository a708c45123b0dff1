"""mmengine hooks of dualopt_mm."""
from .iteration_seed_hook import IterationSeedHook
from .l2sp_hook import L2SPHook
from .norm_eval_hook import NormEvalHook
from .weight_rollback_hook import WeightRollbackHook

__all__ = ['WeightRollbackHook', 'IterationSeedHook', 'L2SPHook', 'NormEvalHook']
