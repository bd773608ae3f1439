"""ResNets for 32x32 inputs.

* ``resnet20`` (and 32/44/56): He et al. 2016, Sec. 4.2 -- a 3x3 stem with 16 filters,
  three stages of 2-conv basic blocks with 16/32/64 filters, global average pooling and
  one linear layer (paper 003's victim, 0.27 M parameters). Shortcuts that change shape
  use option A (stride-2 subsampling, zero-padded channels), as in the original.
* ``resnet50_cifar``: the bottleneck ResNet-50 adapted to CIFAR (3x3 stem, stride 1, no
  max-pool), the common CIFAR victim of paper 002.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images.

    Arguments:
        block: ``BasicBlock`` (ResNet-20/32/44/56) or ``Bottleneck`` (ResNet-50).
        blocks_per_stage: number of blocks in each stage.
        widths: filters of each stage (before the bottleneck expansion).
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
    """

    def __init__(
        self,
        block: type[nn.Module],
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        expansion = getattr(block, "expansion", 1)
        stem = widths[0] if expansion == 1 else 64
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_planes = stem
        for stage, (n_blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(in_planes, width, stride))
                in_planes = width * expansion
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """He et al.'s CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes, in_channels)


def resnet50_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels)
