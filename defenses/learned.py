"""Learned purifiers: networks trained once, applied in one forward pass."""

from pathlib import Path
from typing import Any

import torch
from torch import nn

from defenses.base import Purifier
from defenses.registry import register_defense

REPO = Path(__file__).resolve().parents[1]


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint path as given, or relative to the repository (where the shipped ones are)."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists() or not (REPO / given).exists():
        return given
    return REPO / given


class AutoencoderDefense(Purifier):
    """``autoencoder``: Xiong (paper 003, Sec. 4.3, Table 3): the victim classifies AE(x),
    the reconstruction of a convolutional autoencoder trained on clean images.

    Arguments: checkpoint "checkpoints/autoencoder_cifar.ckpt" (``train.py --config
    autoencoder_cifar.yaml --export ...``).
    """

    name = "autoencoder"

    def __init__(self, checkpoint: str = "checkpoints/autoencoder_cifar.ckpt") -> None:
        from nets import load_autoencoder

        self.checkpoint = resolve_checkpoint(checkpoint)
        self.net = load_autoencoder(self.checkpoint)

    def params(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), **self.net.checkpoint_config}

    def to(self, device: torch.device | str) -> "AutoencoderDefense":
        self.net = self.net.to(device)
        return self

    @torch.no_grad()
    def purify(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.net = self.net.to(images.device)
        return self.net(images).clamp(0, 1)


register_defense(AutoencoderDefense.name, AutoencoderDefense)
