"""Variational autoencoders (Kingma and Welling 2013) whose decoder is the generator G of
Invert-and-Classify (paper 004, Sec. 4.1 "Generative Models").

``mlp``: the paper's MNIST VAE (Metzen's notebook, architecture kept): encoder and decoder
with two fully connected hidden layers of 500 softplus units, a 20-dimensional latent and a
sigmoid output. ``conv``: a DCGAN-shaped convolutional VAE for 32x32 colour images (CIFAR-10),
for users with a GPU. Both decode z ~ N(0, I) to images in [0, 1].
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

VAE_ARCHS = ("mlp", "conv")


class VAE(nn.Module):
    """Arguments:
    arch: "mlp" (paper 004's VAE) or "conv". Default: "mlp".
    image_shape: (C, H, W). Default: (1, 28, 28).
    latent_dim: k, the dimension of z. Default: 20.
    hidden: "mlp": widths of the hidden layers (the decoder mirrors them); "conv": channels of
        the stride-2 convolutions. Default: (500, 500).
    """

    def __init__(
        self,
        arch: str = "mlp",
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
    ) -> None:
        super().__init__()
        if arch not in VAE_ARCHS:
            raise ValueError(f"unknown VAE arch {arch!r}; accepted: {', '.join(VAE_ARCHS)}")
        if latent_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"latent_dim and hidden widths must be positive, got {latent_dim}, {list(hidden)}")
        self.arch, self.image_shape, self.latent_dim = arch, tuple(image_shape), latent_dim
        build = _mlp if arch == "mlp" else _conv
        self.encoder, self.decoder, features = build(self.image_shape, hidden)
        self.to_moments = nn.Linear(features, 2 * latent_dim)  # mean and log-variance of q(z|x)
        self.from_latent = nn.Linear(latent_dim, features)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z | x), each [B, latent_dim]."""
        mean, log_var = self.to_moments(self.encoder(images)).chunk(2, dim=1)
        return mean, log_var

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): images in [0, 1], [B, *image_shape]."""
        return torch.sigmoid(self.decode_logits(z))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z)).view(len(z), *self.image_shape)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction logits, mean, log-variance), with z drawn by reparameterisation."""
        mean, log_var = self.encode(images)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        return self.decode_logits(z), mean, log_var


def _mlp(image_shape: tuple[int, ...], hidden: Sequence[int]) -> tuple[nn.Module, nn.Module, int]:
    dims = math.prod(image_shape)
    encoder: list[nn.Module] = [nn.Flatten()]
    for w_in, w_out in zip([dims, *hidden[:-1]], hidden, strict=True):
        encoder += [nn.Linear(w_in, w_out), nn.Softplus()]
    # The decoder starts after from_latent (latent -> hidden[-1]); it mirrors the encoder.
    widths = list(reversed(hidden))
    decoder: list[nn.Module] = [nn.Softplus()]
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        decoder += [nn.Linear(w_in, w_out), nn.Softplus()]
    decoder.append(nn.Linear(widths[-1], dims))
    return nn.Sequential(*encoder), nn.Sequential(*decoder), hidden[-1]


def _conv(image_shape: tuple[int, ...], hidden: Sequence[int]) -> tuple[nn.Module, nn.Module, int]:
    channels, height, width = image_shape
    scale = 2 ** len(hidden)
    if height % scale or width % scale:
        raise ValueError(f"conv VAE: image size {height}x{width} must be divisible by 2^{len(hidden)}")
    encoder: list[nn.Module] = []
    for c_in, c_out in zip([channels, *hidden[:-1]], hidden, strict=True):
        encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
    encoder.append(nn.Flatten())
    bottom = (hidden[-1], height // scale, width // scale)
    decoder: list[nn.Module] = [nn.Unflatten(1, bottom), nn.ReLU()]
    widths = list(reversed(hidden))
    for c_in, c_out in zip(widths, [*widths[1:], None], strict=True):
        if c_out is None:
            decoder.append(nn.ConvTranspose2d(c_in, channels, 4, stride=2, padding=1))
        else:
            decoder += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*encoder), nn.Sequential(*decoder), math.prod(bottom)
