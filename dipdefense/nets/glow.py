"""Glow (Kingma & Dhariwal 2018) from normflows: the flow of paper 003's adversarial
detector (Sec. 4.4, Table 2: actnorm, invertible 1x1 convolution, affine coupling;
multi-scale, Fig. 3). For a 3x32x32 image and L = 3 levels the latents are 48x4x4,
12x8x8 and 6x16x16 (3,072 numbers, as many as the image has)."""

import math
from collections.abc import Sequence

import normflows as nf
import torch


def build_glow(
    input_shape: Sequence[int] = (3, 32, 32), levels: int = 3, steps: int = 8, hidden_channels: int = 128
) -> nf.MultiscaleFlow:
    """Arguments (paper scale, y0ast Glow-PyTorch: L=3, K=32, hidden 512, 3.39 test bpd):
    input_shape: (C, H, W), H and W divisible by 2**levels. Default: (3, 32, 32).
    levels: L, scales of the multi-scale architecture. Default: 3.
    steps: K, flow steps (GlowBlock: actnorm, LU 1x1 conv, affine coupling) per level. Default: 8.
    hidden_channels: width of each coupling network. Default: 128.
    """
    c, h, w = input_shape
    if levels < 1 or steps < 1 or h % 2**levels or w % 2**levels:
        raise ValueError(
            f"Glow needs levels >= 1, steps >= 1 and H, W divisible by 2**levels; got {levels}, {steps}, {(h, w)}"
        )
    q0, merges, flows = [], [], []
    for i in range(levels):  # i = 0 is the coarsest level (normflows runs data -> latent from i = L-1 down)
        channels = c * 2 ** (levels + 1 - i)
        blocks = [nf.flows.GlowBlock(channels, hidden_channels, split_mode="channel", scale=True) for _ in range(steps)]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            shape = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.DiagGaussian(shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit images in [0, 1]: (255 x + u) / 256, u ~ U(0, 1)."""
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images * 255 + noise) / 256


def bin_centres(images: torch.Tensor) -> torch.Tensor:
    """The deterministic counterpart of ``dequantize`` (u = 1/2), for latents at test time.
    Not for likelihoods: the density at bin centres overstates the dequantised likelihood."""
    return (images * 255 + 0.5) / 256


def bits_per_dim(negative_log_likelihood: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits per dimension of 8-bit data from the continuous NLL of inputs scaled by 1/256."""
    return negative_log_likelihood / (dims * math.log(2)) + 8


def glow_latents(flow: nf.MultiscaleFlow, images: torch.Tensor) -> torch.Tensor:
    """All levels' latents of images in [0, 1], flattened and concatenated, [B, C*H*W]."""
    z, _ = flow.inverse_and_log_det(bin_centres(images))
    return torch.cat([level.flatten(1) for level in z], dim=1)
