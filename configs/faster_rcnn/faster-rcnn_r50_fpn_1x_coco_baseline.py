# Faster R-CNN R50-FPN 1x COCO (MMDetection, SGD).
# Stock baseline / DualOpt (OLOR fine-tuning) pair: the two files differ by exactly the last
# line (`diff faster-rcnn_r50_fpn_1x_coco_baseline.py faster-rcnn_r50_fpn_1x_coco_dualopt.py`):
#   baseline: the upstream config as is (SGD).
#   dualopt:  DualOptOptimWrapperConstructor swaps SGD for DualOptSGD (same kwargs) and
#             rolls the tensors the pretrained checkpoint fills back toward their pretrained
#             values: 1% of the displacement per step at the base lr for the shallowest block
#             (k_max=0.01), falling linearly to 0 at the deepest; new layers get plain SGD.
# Both log ||theta - theta_0|| / ||theta_0|| per backbone block (train/drift/<block>).
# Upstream: mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py (box AP 37.4).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)
custom_hooks = [dict(type='WeightRollbackHook', interval=50)]
optim_wrapper = dict(constructor='DefaultOptimWrapperConstructor')
