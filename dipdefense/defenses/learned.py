"""Learned defenses: networks trained once, applied in one forward pass."""

from typing import Any

import torch
from torch import nn

from dipdefense.common.checkpoint_io import resolve_repo_path
from dipdefense.defenses.base import Detector, Purifier
from dipdefense.defenses.registry import register_defense


class AutoencoderDefense(Purifier):
    """``autoencoder``: Xiong (paper 003, Sec. 4.3, Table 3): the victim classifies AE(x),
    the reconstruction of a convolutional autoencoder trained on clean images.

    Arguments: checkpoint "checkpoints/autoencoder_cifar.ckpt" (``train.py --config
    autoencoder_cifar.yaml --export ...``).
    """

    name = "autoencoder"
    differentiable = True

    def __init__(self, checkpoint: str = "checkpoints/autoencoder_cifar.ckpt") -> None:
        from dipdefense.nets import load_autoencoder

        self.checkpoint = resolve_repo_path(checkpoint)
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
        return self.purify_with_grad(images)

    def purify_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        self.net = self.net.to(images.device)
        return self.net(images).clamp(0, 1)


class GlowGate(Detector):
    """``glow_gate``: Xiong (paper 003, Sec. 5.2, Table 4): the probability, from a 5-layer MLP
    on a frozen Glow's latents, that an image is adversarial; it is flagged at ``threshold``.
    Alone it reports detection figures; as ``glow_gate+PURIFIER`` it gates a purifier.

    Arguments: checkpoint "checkpoints/glow_detector_cifar.ckpt" (``train.py --config
    glow_detector_cifar.yaml --export ...``), threshold 0.5.
    """

    name = "glow_gate"

    def __init__(self, checkpoint: str = "checkpoints/glow_detector_cifar.ckpt", threshold: float = 0.5) -> None:
        from dipdefense.nets import load_glow_detector

        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
        self.checkpoint = resolve_repo_path(checkpoint)
        self.net = load_glow_detector(self.checkpoint)
        self.threshold = threshold

    def params(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "threshold": self.threshold, **self.net.checkpoint_config}

    def to(self, device: torch.device | str) -> "GlowGate":
        self.net = self.net.to(device)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit(images).sigmoid()

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        self.net = self.net.to(images.device)
        return self.net(images).float()


register_defense(AutoencoderDefense.name, AutoencoderDefense)
register_defense(GlowGate.name, GlowGate)
