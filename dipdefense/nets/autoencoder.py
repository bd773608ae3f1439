"""The convolutional autoencoder purifier of Xiong (paper 003, Sec. 4.3, Fig. 2): four
convolutional layers, two that halve the resolution and two transposed ones that restore it,
trained on clean images only, so that its reconstruction of an attacked image drops much of
the perturbation."""

from collections.abc import Sequence

import torch
from torch import nn


class ConvAutoencoder(nn.Module):
    """Arguments:
    in_channels: image channels. Default: 3.
    channels: output channels of the two encoder convolutions; the second is the code
        width (the code is channels[1] x H/4 x W/4). Default: (64, 16).
    kernel: kernel size of the encoder convolutions. Default: 3.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 16), kernel: int = 3) -> None:
        super().__init__()
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels must be two positive widths (hidden, code), got {list(channels)}")
        hidden, code = channels
        pad = kernel // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel, stride=2, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, code, kernel, stride=2, padding=pad),
            nn.ReLU(inplace=True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code, hidden, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, in_channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % 4 or images.shape[-2] % 4:
            raise ValueError(f"image height and width must be multiples of 4, got {tuple(images.shape[-2:])}")
        return self.decoder(self.encoder(images))
