"""A small CNN for 28x28 grey images (Fashion-MNIST, MNIST).

Two stages of two 3x3 conv+BN+ReLU layers (32 and 64 filters), each closed by 2x2
max-pooling, then a 128-unit hidden layer with dropout.
"""

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Arguments:
    num_classes: output logits. Default: 10.
    in_channels: image channels. Default: 1.
    image_size: input height and width. Default: 28.
    hidden: width of the hidden fully connected layer. Default: 128.
    dropout: dropout before the last layer. Default: 0.3.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
        )
        flat = 64 * (image_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
