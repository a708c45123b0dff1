# Swin-L (ImageNet-21k pretrained) fine-tuned on CUB-200-2011 at 384px (MMPretrain, AdamW).
# Stock baseline / DualOpt (OLOR fine-tuning) pair: the two files differ by exactly the last
# line (`diff swin-large_8xb8_cub-384px_baseline.py swin-large_8xb8_cub-384px_dualopt.py`):
#   baseline: the upstream config as is (AdamW).
#   dualopt:  DualOptOptimWrapperConstructor swaps AdamW for DualOptAdamW (same kwargs) and
#             rolls the tensors the pretrained checkpoint fills back toward their pretrained
#             values: 1% of the displacement per step at the base lr for the shallowest block
#             (k_max=0.01), falling linearly to 0 at the deepest; new layers get plain AdamW.
# Both log ||theta - theta_0|| / ||theta_0|| per backbone block (train/drift/<block>).
# Upstream: mmpretrain::swin_transformer/swin-large_8xb8_cub-384px.py (top-1 91.87).
_base_ = 'mmpretrain::swin_transformer/swin-large_8xb8_cub-384px.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
custom_hooks = [dict(type='WeightRollbackHook', interval=20)]
optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')
