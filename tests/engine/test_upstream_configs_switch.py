"""The README's one-line switch on the installed upstream configs (mmdet COCO, mmseg ADE20K).

For one representative config per model family (sampled from the installed config folders,
the list below is checked against them), the stock config and the switched one are built on
the same model (random init, nothing loaded, CPU) through a real mmengine Runner, and:

- every trainable tensor keeps its stock lr and weight decay bit for bit;
- the backbone is indexed by its own depth definition or a named block rule (not the generic
  one);
- fine-tuning configs (weights named in ``init_cfg`` / ``pretrained`` / ``load_from``) review
  the backbone only: necks and heads are not rolled back toward their random init;
- from-scratch configs (no weights anywhere) are not rolled back at all: scratch mode.
"""
import os
import os.path as osp

import pytest

import dualopt_mm.engine  # noqa: F401

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402
from upstream_walk import compare, config_root, differences  # noqa: E402

# (package, config) -> the backbone's rule, or its own definition (layer_index.index_blocks);
# SLOW ones are larger models (run in CI all the same)
FAST = {
    ('mmdet', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'): 'ResNet',
    ('mmdet', 'yolox/yolox_s_8xb8-300e_coco.py'): 'Staged',
    ('mmdet', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py'): 'Staged',
    ('mmdet', 'ssd/ssd300_coco.py'): 'SSD VGG',
    ('mmdet', 'pvt/retinanet_pvtv2-b0_fpn_1x_coco.py'): 'MiT',
    ('mmdet', 'efficientnet/retinanet_effb3_fpn_8xb4-crop896-1x_coco.py'): 'Twins/EfficientNet',
    ('mmseg', 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'): 'MiT',
    ('mmseg', 'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'): 'MSCAN',
    ('mmseg', 'mobilenet_v2/mobilenet-v2-d8_fcn_4xb4-160k_ade20k-512x512.py'): 'ResNet',
    ('mmseg', 'hrnet/fcn_hr18s_4xb4-160k_ade20k-512x512.py'): 'Staged',
}
SLOW = {
    ('mmdet', 'scratch/mask-rcnn_r50-scratch_fpn_gn-all_6x_coco.py'): 'ResNet',
    ('mmdet', 'yolo/yolov3_d53_8xb8-320-273e_coco.py'): 'Darknet',
    ('mmdet', 'cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py'): 'HourglassNet',
    ('mmdet', 'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'): 'Swin',
    ('mmdet', 'hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py'): 'Staged',
    ('mmdet', 'regnet/retinanet_regnetx-800MF_fpn_1x_coco.py'): 'ResNet',
    ('mmseg', 'twins/twins_pcpvt-s_uperhead_8xb4-160k_ade20k-512x512.py'): 'Twins/EfficientNet',
    ('mmseg', 'twins/twins_svt-s_fpn_fpnhead_8xb4-80k_ade20k-512x512.py'): 'Twins/EfficientNet',
    ('mmseg', 'poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py'): 'PoolFormer',
    ('mmseg', 'vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py'): 'ViT',
    ('mmseg', 'mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py'): 'ViT',
    ('mmseg', 'convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'):
        'mmpretrain get_layer_depth',
}


def pretrained_in_config(cfg: Config) -> bool:
    """Whether the config names pretrained weights (read from the config, not our code)."""
    model = cfg.model
    backbone = model.get('backbone') or {}
    init_cfg = backbone.get('init_cfg') or {}
    init_cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    return bool(cfg.get('load_from') or model.get('pretrained') or backbone.get('pretrained')
                or any(c.get('checkpoint') for c in init_cfgs))


def test_sample_covers_the_installed_config_folders():
    """Every sampled config exists, and every family listed here has its folder installed."""
    for package, path in list(FAST) + list(SLOW):
        assert osp.isfile(osp.join(config_root(package), path)), (package, path)
    folders = {(p, path.split('/')[0]) for p, path in list(FAST) + list(SLOW)}
    for package, folder in folders:
        assert folder in os.listdir(config_root(package))


@pytest.mark.parametrize('package, path', [
    *[pytest.param(p, c, id=c.split('/')[-1][:-3]) for p, c in FAST],
    *[pytest.param(p, c, id=c.split('/')[-1][:-3], marks=pytest.mark.slow) for p, c in SLOW],
])
def test_one_line_switch_keeps_the_config_meaning(package, path, tmp_path):
    source = {**FAST, **SLOW}[(package, path)]
    source = source if source.startswith(('mmpretrain ', 'timm ')) else f'rule: {source}'
    full = osp.join(config_root(package), path)
    result = compare(full, str(tmp_path))
    assert differences(result) == []
    groups = result['groups']
    backbone = [g for g in groups if g['param_name'].startswith('backbone.')]
    assert {g['index_source'] for g in backbone} == {source}
    reviewed = [g for g in groups if g['mode'] != 'none']
    if pretrained_in_config(Config.fromfile(full)):
        assert reviewed and {g['mode'] for g in reviewed} == {'finetune'}
        assert all(g['param_name'].startswith('backbone.') for g in reviewed)
    else:  # from scratch: decayed toward 0, never rolled back toward the random init
        assert {g['mode'] for g in groups} == {'scratch'}
        assert all('anchor' not in result['optimizer'].state[g['params'][0]] for g in groups)
    # reviewed levels follow the block index: one level per block, 0..N in depth order
    ids = sorted({g['layer_id'] for g in reviewed})
    assert ids == list(range(len(ids))) and len(ids) < len(reviewed)


def test_configs_of_other_packages_built_within_one_second_keep_their_scope(tmp_path,
                                                                             monkeypatch):
    """mmengine names the Runner's DefaultScope '<experiment>_<second>' and hands back an
    existing instance of that name: two walks built within one second (CI's machine is fast
    enough) must each resolve their model in their own package's registry."""
    import time
    monkeypatch.setattr(time, 'strftime', lambda fmt, *args: '20261203_000000')
    (tmp_path / 'mmdet').mkdir()
    (tmp_path / 'mmseg').mkdir()
    mmdet = compare(osp.join(config_root('mmdet'), 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py'),
                    str(tmp_path / 'mmdet'))
    mmseg = compare(osp.join(config_root('mmseg'),
                             'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'),
                    str(tmp_path / 'mmseg'))
    assert type(mmdet['runner'].model).__name__ == 'RTMDet'
    assert type(mmseg['runner'].model).__name__ == 'EncoderDecoder'
