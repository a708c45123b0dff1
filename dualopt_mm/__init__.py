"""dualopt_mm: DualOpt / OLOR optimizers for OpenMMLab.

``import dualopt_mm`` registers ``DualOptSGD``, ``DualOptAdam``, ``DualOptAdamW`` (root
``OPTIMIZERS``), ``DualOptOptimWrapperConstructor`` (root ``OPTIM_WRAPPER_CONSTRUCTORS``) and
``WeightRollbackHook`` (root ``HOOKS``) in mmengine's registries, so any MMDetection /
MMSegmentation / MMPretrain config reaches them with
``custom_imports = dict(imports=['dualopt_mm'])``. It also lets torch >= 2.6 load mmengine
checkpoints with ``weights_only=True`` (see :mod:`dualopt_mm.compat`). The optimizers themselves
need only torch.
"""
from .optim import DualOptAdam, DualOptAdamW, DualOptSGD
from .version import __version__

__all__ = ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW', '__version__']

try:
    import mmengine  # noqa: F401
except ImportError:  # plain-PyTorch use: nothing to register
    pass
else:
    from .compat import enable_mmengine_checkpoint_loading
    from .engine import DualOptOptimWrapperConstructor, WeightRollbackHook  # noqa: F401
    from .registry import register_optimizers

    register_optimizers()
    # mmengine 0.10 checkpoints (resume, load_from) hold objects torch >= 2.6 refuses under
    # weights_only=True: allow exactly those, so `--resume` also works through the upstream
    # mmdet / mmseg / mmpretrain train scripts that import us via custom_imports.
    enable_mmengine_checkpoint_loading()
    __all__ += ['DualOptOptimWrapperConstructor', 'WeightRollbackHook']
