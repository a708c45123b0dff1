# Smoke config: MMPretrain's stock ResNet-18 ImageNet recipe with one changed line, the
# optimizer (SGD -> DualOptSGD; momentum / weight_decay / lr are inherited and accepted).
# Used by tests/test_mim.py (`mim train dualopt_mm resnet18_dualopt_smoke.py`) with tiny
# --cfg-options overrides. To try it on generated data:
#   python tools/data/generate_datasets.py --kind classification --out data/synthetic/cls
#   python tools/train.py configs/smoke/resnet18_dualopt_smoke.py --cfg-options \
#       train_dataloader.dataset.data_root=data/synthetic/cls \
#       val_dataloader.dataset.data_root=data/synthetic/cls \
#       train_dataloader.batch_size=4 val_dataloader.batch_size=4 train_cfg.max_epochs=1
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'

custom_imports = dict(imports=['dualopt_mm'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='DualOptSGD'))
