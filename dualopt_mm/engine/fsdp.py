"""FSDP names and refusals: kept importable here; the code lives in
:mod:`dualopt_mm.engine.strategies.fsdp` (one adapter per strategy)."""
from .strategies.fsdp import WRAPPER_NAME_PARTS, check_fsdp, clean_name, is_fsdp

__all__ = ['WRAPPER_NAME_PARTS', 'check_fsdp', 'clean_name', 'is_fsdp']
