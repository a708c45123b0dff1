# ResNet-18 trained from scratch on CIFAR-10 (MMPretrain, SGD).
# Stock baseline / DualOpt (from scratch) pair: the two files differ by exactly the last line
# (`diff resnet18_8xb16_cifar10_baseline.py resnet18_8xb16_cifar10_dualopt.py`):
#   baseline: the upstream config as is (SGD, weight_decay=1e-4).
#   dualopt:  DualOptSGD in scratch mode: the uniform L2 weight decay is replaced by DualOpt's
#             real-time layer-wise decay toward 0, theta <- theta_hat - lr * k_i * theta_hat,
#             k_i falling linearly from k_max=2e-4 (2x the stock weight decay, so the mean over
#             blocks matches it) at the stem to 0 at the deepest block; biases and norms are
#             not decayed (skip_1d, the scratch default).
# Upstream: mmpretrain::resnet/resnet18_8xb16_cifar10.py (top-1 94.82).
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
optim_wrapper = dict(constructor='DefaultOptimWrapperConstructor')
