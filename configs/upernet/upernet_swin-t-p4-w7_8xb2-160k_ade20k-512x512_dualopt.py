# UperNet Swin-T 512x512 160k ADE20K (MMSegmentation, AdamW).
# Stock baseline / DualOpt (OLOR fine-tuning) pair: the two files differ by exactly the last
# line (`diff upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512_baseline.py upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512_dualopt.py`):
#   baseline: the upstream config as is (AdamW).
#   dualopt:  DualOptOptimWrapperConstructor swaps AdamW for DualOptAdamW (same kwargs) and
#             rolls the tensors the pretrained checkpoint fills back toward their pretrained
#             values: 1% of the displacement per step at the base lr for the shallowest block
#             (k_max=0.01), falling linearly to 0 at the deepest; new layers get plain AdamW.
# Both log ||theta - theta_0|| / ||theta_0|| per backbone block (train/drift/<block>).
# Upstream: mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py (mIoU 44.41, ms+flip 45.79).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
custom_hooks = [dict(type='WeightRollbackHook', interval=50)]
optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')
