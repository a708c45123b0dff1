"""mmengine hooks of dualopt_mm."""
from .weight_rollback_hook import WeightRollbackHook

__all__ = ['WeightRollbackHook']
