"""The Glow-latent adversarial detector of Xiong (paper 003, Sec. 5.2, Fig. 5): a frozen Glow
maps the image to its latents (all levels, flattened), and a 5-layer fully connected network
scores clean (0) against adversarial (1)."""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dipdefense.nets.glow import build_glow, glow_latents


class GlowLatentDetector(nn.Module):
    """Arguments:
    glow: ``nets.glow.build_glow`` arguments. Default: {} (its defaults).
    hidden: widths of the four hidden layers (five linear layers in all). Default: (512, 256, 128, 64).
    """

    def __init__(self, glow: dict[str, Any] | None = None, hidden: Sequence[int] = (512, 256, 128, 64)) -> None:
        super().__init__()
        glow = dict(glow or {})
        if "input_shape" in glow:
            glow["input_shape"] = tuple(glow["input_shape"])
        self.glow = build_glow(**glow)
        widths = [math.prod(glow.get("input_shape", (3, 32, 32))), *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        # the Glow is frozen: no graph while the MLP trains, but an attack on the detector
        # (images that require grad) needs the gradient through the flow
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            return glow_latents(self.glow, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits, [B]: positive means adversarial."""
        return self.mlp(self.latents(images)).squeeze(1)
