"""dualopt_mm: DualOpt / OLOR optimizers for OpenMMLab.

``import dualopt_mm`` registers ``DualOptSGD``, ``DualOptAdam``, ``DualOptAdamW`` (root
``OPTIMIZERS``), ``DualOptOptimWrapperConstructor`` (root ``OPTIM_WRAPPER_CONSTRUCTORS``) and
``WeightRollbackHook`` (root ``HOOKS``) in mmengine's registries, so any MMDetection /
MMSegmentation / MMPretrain config reaches them with
``custom_imports = dict(imports=['dualopt_mm'])``. The optimizers themselves need only torch.
"""
from .optim import DualOptAdam, DualOptAdamW, DualOptSGD
from .version import __version__

__all__ = ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW', '__version__']

try:
    import mmengine  # noqa: F401
except ImportError:  # plain-PyTorch use: nothing to register
    pass
else:
    from .engine import DualOptOptimWrapperConstructor, WeightRollbackHook  # noqa: F401
    from .registry import register_optimizers

    register_optimizers()
    __all__ += ['DualOptOptimWrapperConstructor', 'WeightRollbackHook']
