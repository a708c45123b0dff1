"""dualopt_mm: DualOpt / OLOR optimizers for OpenMMLab.

``import dualopt_mm`` registers ``DualOptSGD``, ``DualOptAdam``, ``DualOptAdamW`` (root
``OPTIMIZERS``), ``DualOptOptimWrapperConstructor`` (root ``OPTIM_WRAPPER_CONSTRUCTORS``) and
``WeightRollbackHook`` (root ``HOOKS``) in mmengine's registries, so any MMDetection /
MMSegmentation / MMPretrain config reaches them with
``custom_imports = dict(imports=['dualopt_mm'])``. It also lets mmengine's own checkpoint loader
(resume, ``load_from``) read mmengine 0.10 checkpoints under torch >= 2.6's ``weights_only=True``
through validating decoders, without changing torch's safe list (see
:mod:`dualopt_mm.compat.checkpoint`). The optimizers themselves need only torch.
"""
from .optim import DualOptAdam, DualOptAdamW, DualOptSGD
from .version import __version__

__all__ = ['DualOptSGD', 'DualOptAdam', 'DualOptAdamW', '__version__']

try:
    import mmengine  # noqa: F401
except ImportError:  # plain-PyTorch use: nothing to register
    pass
else:
    from .compat import checkpoint
    from .engine import DualOptOptimWrapperConstructor, WeightRollbackHook  # noqa: F401
    from .registry import register_optimizers

    register_optimizers()
    # mmengine 0.10 checkpoints (resume, load_from) hold objects torch >= 2.6 refuses under
    # weights_only=True: mmengine's loader reads them through decoders that accept only those
    # (torch's own safe list is left alone), so `--resume` also works through the upstream
    # mmdet / mmseg / mmpretrain train scripts that import us via custom_imports.
    checkpoint.install()
    __all__ += ['DualOptOptimWrapperConstructor', 'WeightRollbackHook']
