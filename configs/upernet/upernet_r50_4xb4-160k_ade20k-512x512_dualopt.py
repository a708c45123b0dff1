# UperNet R50 512x512 160k ADE20K (MMSegmentation, SGD).
# Stock baseline / DualOpt (OLOR fine-tuning) pair: the two files differ by exactly the last
# line (`diff upernet_r50_4xb4-160k_ade20k-512x512_baseline.py upernet_r50_4xb4-160k_ade20k-512x512_dualopt.py`):
#   baseline: the upstream config as is (SGD).
#   dualopt:  DualOptOptimWrapperConstructor swaps SGD for DualOptSGD (same kwargs) and
#             rolls the tensors the pretrained checkpoint fills back toward their pretrained
#             values: 1% of the displacement per step at the base lr for the shallowest block
#             (k_max=0.01), falling linearly to 0 at the deepest; new layers get plain SGD.
# Both log ||theta - theta_0|| / ||theta_0|| per backbone block (train/drift/<block>).
# Upstream: mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py (mIoU 42.05, ms+flip 42.78).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
custom_hooks = [dict(type='WeightRollbackHook', interval=50)]
optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')
