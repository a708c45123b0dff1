# ResNet-50 trained from scratch on ImageNet-1k (MMPretrain, SGD).
# Stock baseline / DualOpt (from scratch) pair: the two files differ by exactly the last line
# (`diff resnet50_8xb32_in1k_baseline.py resnet50_8xb32_in1k_dualopt.py`):
#   baseline: the upstream config as is (SGD, weight_decay=1e-4).
#   dualopt:  DualOptSGD in scratch mode: the uniform L2 weight decay is replaced by DualOpt's
#             real-time layer-wise decay toward 0, theta <- theta_hat - lr * k_i * theta_hat,
#             k_i falling linearly from k_max=2e-4 (2x the stock weight decay, so the mean over
#             blocks matches it) at the stem to 0 at the deepest block; biases and norms are
#             not decayed (skip_1d, the scratch default).
# Upstream: mmpretrain::resnet/resnet50_8xb32_in1k.py (top-1 76.55).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor', optimizer=dict(weight_decay=0.0), paramwise_cfg=dict(dualopt=dict(mode='scratch', k_unit='absolute', k_max=2e-4)))
