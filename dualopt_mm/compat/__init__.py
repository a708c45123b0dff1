"""Compatibility fixes for the OpenMMLab 2.x stack on current PyTorch and CPU-only machines.

* :func:`enable_mmengine_checkpoint_loading`: mmengine 0.10.x checkpoints (resume, ``load_from``,
  test) load through mmengine's loader under torch >= 2.6's ``weights_only=True`` default,
  through validating decoders (torch's safe list is not changed);
  :func:`load_mmengine_checkpoint` does the same for a direct load.
* :func:`patch_mmengine_for_cpu_ddp`: ``torchrun ... --launcher pytorch`` works without CUDA
  (gloo backend, no ``device_ids``, SyncBN reverted to BN).
* :func:`patch_mmengine_fsdp_strategy`: ``FlexibleRunner`` + ``FSDPStrategy`` resumes on
  torch >= 2.1 and runs on CPU (``device_id``, no segfault when saving).
* :func:`patch_mmengine_deepspeed_strategy`: ``DeepSpeedStrategy`` can be built more than
  once per process; a deepspeed without ``fp16.onebit`` is named with the version to install.

``tools/train.py`` and ``tools/test.py`` apply both; :func:`apply_all` does the same for other
entry points.
"""
from .checkpoint import enable_mmengine_checkpoint_loading, load_mmengine_checkpoint
from .cpu_ddp import is_cpu_ddp_patched, patch_mmengine_for_cpu_ddp
from .deepspeed_strategy import patch_mmengine_deepspeed_strategy
from .fsdp_strategy import patch_mmengine_fsdp_strategy

__all__ = [
    'apply_all',
    'enable_mmengine_checkpoint_loading',
    'is_cpu_ddp_patched',
    'load_mmengine_checkpoint',
    'patch_mmengine_deepspeed_strategy',
    'patch_mmengine_for_cpu_ddp',
    'patch_mmengine_fsdp_strategy',
]


def apply_all() -> None:
    """Apply every fix of this module (each is idempotent and a no-op where not needed)."""
    enable_mmengine_checkpoint_loading()
    patch_mmengine_for_cpu_ddp()
    patch_mmengine_fsdp_strategy()
    patch_mmengine_deepspeed_strategy()
