"""Check that the installed OpenMMLab stack works on this machine (run by setup_env.sh).

Imports every package the project needs, runs mmcv's compiled ``nms`` and ``RoIAlign`` on
small CPU tensors, and prints one line per package with its version.
"""
import importlib
import sys

PACKAGES = ['torch', 'torchvision', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'mim',
            'pycocotools', 'dualopt_mm']


def check_mmcv_ops() -> None:
    import torch
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f'mmcv.ops.nms returned {keep.tolist()}, expected [0, 2]')
    features = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(features, rois)
    if pooled.shape != (1, 1, 2, 2) or not torch.isfinite(pooled).all():
        raise RuntimeError(f'mmcv.ops.RoIAlign returned {pooled}')


def main() -> int:
    failed = False
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # report every broken package, not only the first
            print(f'  {name:12s} FAILED: {type(error).__name__}: {error}')
            failed = True
        else:
            print(f'  {name:12s} {getattr(module, "__version__", "?")}')
    if not failed:
        check_mmcv_ops()
        print('  mmcv.ops nms / RoIAlign run on CPU')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
