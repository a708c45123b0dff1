# Faster R-CNN Lite0-FPN fine-tuned on real NEON tree crowns (see _base_/ for data and weights).
# Baseline / DualOpt pair: the two files differ by exactly the last line.
#   baseline: stock SGD (momentum 0.9, weight decay 1e-4).
#   dualopt:  DualOptOptimWrapperConstructor swaps SGD for DualOptSGD with the defaults
#             (k_max=0.01: 1% of the backbone's displacement from its pretrained value rolled
#             back per step at the base lr, shallowest layer; linear to 0 at the deepest).
# Both keep BN statistics frozen (NormEvalHook) and log per-block drift (WeightRollbackHook).
#   python tools/train.py configs/real/faster-rcnn_lite0_fpn_neon-trees_{baseline,dualopt}.py
_base_ = './_base_/faster-rcnn_lite0_fpn_neon-trees.py'

optim_wrapper = dict(constructor='DefaultOptimWrapperConstructor')
