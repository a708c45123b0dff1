"""Small models shared by the engine tests (CPU, milliseconds)."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModel, BaseModule


class BackboneWithHead(nn.Module):
    """A real backbone under ``backbone.`` and a new linear ``head.``: the names a detector or
    segmentor gives the layer index."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(4, 2)


class ToyBlock(nn.Module):

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                         nn.BatchNorm2d(cout)) if cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn1(self.conv1(x)) + identity)


class ToyResNet(BaseModule):
    """ResNet naming: stem conv1/bn1, layer1 (2 blocks), layer2 (1 block, downsample).

    15 tensors: stem 3, layer1.0 3, layer1.1 3, layer2.0 6.
    """

    def __init__(self, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(ToyBlock(4, 4), ToyBlock(4, 4))
        self.layer2 = nn.Sequential(ToyBlock(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))


class ToyDetector(BaseModel):
    """backbone (ToyResNet) + neck (1x1 conv with bias) + head (linear); 19 tensors."""

    def __init__(self, backbone_init_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.backbone = ToyResNet(backbone_init_cfg)
        self.neck = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        feats = self.neck(self.backbone(inputs)).mean((2, 3))
        logits = self.head(feats)
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


BACKBONE_NAMES = [
    'backbone.conv1.weight', 'backbone.bn1.weight', 'backbone.bn1.bias',
    'backbone.layer1.0.conv1.weight', 'backbone.layer1.0.bn1.weight',
    'backbone.layer1.0.bn1.bias', 'backbone.layer1.1.conv1.weight',
    'backbone.layer1.1.bn1.weight', 'backbone.layer1.1.bn1.bias',
    'backbone.layer2.0.conv1.weight', 'backbone.layer2.0.bn1.weight',
    'backbone.layer2.0.bn1.bias', 'backbone.layer2.0.downsample.0.weight',
    'backbone.layer2.0.downsample.1.weight', 'backbone.layer2.0.downsample.1.bias',
]
HEAD_NAMES = ['neck.weight', 'neck.bias', 'head.weight', 'head.bias']
