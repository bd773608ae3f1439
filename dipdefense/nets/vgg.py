"""VGG16 with batch norm for 32x32 inputs (paper 000's CIFAR victim).

Simonyan & Zisserman's configuration D (13 conv layers in five stages of 64-512
filters); at 32x32 the five max-pools leave a 1x1x512 map, so the classifier is one
linear layer as in the usual CIFAR adaptation.
"""

import torch
from torch import nn

VGG16_LAYOUT: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG for small images.

    Arguments:
        layout: conv widths with ``"M"`` for 2x2 max-pooling. Default: VGG16 (config D).
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
        dropout: dropout before the classifier. Default: 0.0.
    """

    def __init__(
        self,
        layout: list[int | str] | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout or VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item))]
                layers.append(nn.ReLU(inplace=True))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1))
