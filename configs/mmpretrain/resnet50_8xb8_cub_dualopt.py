# ResNet-50 (ImageNet-21k pretrained) fine-tuned on CUB-200-2011 (MMPretrain, SGD).
# Stock baseline / DualOpt (OLOR fine-tuning) pair: the two files differ by exactly the last
# line (`diff resnet50_8xb8_cub_baseline.py resnet50_8xb8_cub_dualopt.py`):
#   baseline: the upstream config as is (SGD).
#   dualopt:  DualOptOptimWrapperConstructor swaps SGD for DualOptSGD (same kwargs) and
#             rolls the tensors the pretrained checkpoint fills back toward their pretrained
#             values: 1% of the displacement per step at the base lr for the shallowest block
#             (k_max=0.01), falling linearly to 0 at the deepest; new layers get plain SGD.
# Both log ||theta - theta_0|| / ||theta_0|| per backbone block (train/drift/<block>).
# Upstream: mmpretrain::resnet/resnet50_8xb8_cub.py (top-1 88.45).
_base_ = 'mmpretrain::resnet/resnet50_8xb8_cub.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
custom_hooks = [dict(type='WeightRollbackHook', interval=20)]
optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')
