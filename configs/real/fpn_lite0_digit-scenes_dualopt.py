# Semantic FPN Lite0 fine-tuned on real digits pasted on real aerial photos (see _base_/).
# Baseline / DualOpt pair: the two files differ by exactly the last line.
#   baseline: AdamW (lr 1e-3, weight decay 0.01).
#   dualopt:  DualOptOptimWrapperConstructor swaps AdamW for DualOptAdamW with the defaults
#             (k_max=0.01 per step at the base lr for the shallowest layer, linear to 0).
# Both keep BN statistics frozen (NormEvalHook) and log per-block drift (WeightRollbackHook).
#   python tools/train.py configs/real/fpn_lite0_digit-scenes_{baseline,dualopt}.py
_base_ = './_base_/fpn_lite0_digit-scenes.py'

optim_wrapper = dict(constructor='DualOptOptimWrapperConstructor')
