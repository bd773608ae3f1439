"""Deep-image-prior purifiers: one batched DIP engine, one selection rule each."""

from typing import Any

import torch
from torch import nn

from defenses.base import Purifier
from defenses.registry import register_defense
from dip.engine import DIPSettings, fit_dip
from dip.stitching import StitchRule, StitchSettings

# Paper 002, App. B.
DIP_NETWORKS: dict[str, dict[str, Any]] = {
    "cifar": {
        "channels_down": [32] * 3,
        "channels_up": [32] * 3,
        "channels_skip": [3] * 3,
        "kernel_down": 3,
        "kernel_up": 3,
    },
    "imagenet": {
        "channels_down": [64] * 5,
        "channels_up": [64] * 5,
        "channels_skip": [4] * 5,
        "kernel_down": 3,
        "kernel_up": 3,
    },
    "small": {
        "channels_down": [16] * 2,
        "channels_up": [16] * 2,
        "channels_skip": [4] * 2,
        "kernel_down": 2,
        "kernel_up": 2,
    },
    "medium": {
        "channels_down": [32] * 3,
        "channels_up": [32] * 3,
        "channels_skip": [3] * 3,
        "kernel_down": 3,
        "kernel_up": 3,
    },
    "large": {
        "channels_down": [48] * 4,
        "channels_up": [48] * 4,
        "channels_skip": [4] * 4,
        "kernel_down": 4,
        "kernel_up": 4,
    },
}


class DIPStitch(Purifier):
    """``dip_stitch``: Ding et al. 2021 (paper 002), Algorithm 1 (see ``dip/stitching.py``).

    Arguments:
        network: a name from ``DIP_NETWORKS`` or ``dip.skip`` arguments. Default: "cifar".
        iterations: T (1000 CIFAR, 3000 ImageNet). Default: 1000.
        lr: Adam learning rate. Default: 0.01.
        noise_scale: z ~ U(0, noise_scale) (1/30 CIFAR, 1/100 ImageNet). Default: 1/30.
        observe_every: the classifier sees every k-th iterate (T/200). Default: 5.
        tau, t0, k, beta, grid: the rule's settings (0.7, 50, 15, 0.5, 100).
        dip_batch: images fitted at once (changes speed, not results). Default: 32.
        seed: each image's DIP is seeded from (seed, dataset index). Default: 0.
    """

    name = "dip_stitch"

    def __init__(
        self,
        network: str | dict[str, Any] = "cifar",
        iterations: int = 1000,
        lr: float = 0.01,
        noise_scale: float = 1 / 30,
        observe_every: int = 5,
        tau: float = 0.7,
        t0: int = 50,
        k: int = 15,
        beta: float = 0.5,
        grid: int = 100,
        dip_batch: int = 32,
        seed: int = 0,
    ) -> None:
        if isinstance(network, str) and network not in DIP_NETWORKS:
            raise ValueError(
                f"unknown DIP network {network!r}; accepted: {', '.join(DIP_NETWORKS)} or skip() arguments"
            )
        self.network = network
        self.dip = DIPSettings(
            network=DIP_NETWORKS[network] if isinstance(network, str) else dict(network),
            noise_scale=noise_scale,
            iterations=iterations,
            lr=lr,
            observe_every=observe_every,
        )
        self.rule = StitchSettings(tau=tau, t0=t0, k=k, beta=beta, grid=grid)
        self.dip_batch, self.seed = dip_batch, seed

    def params(self) -> dict[str, Any]:
        return {
            "network": self.dip.network,
            **{k: v for k, v in vars(self.dip).items() if k != "network"},
            **vars(self.rule),
            "seed": self.seed,
        }

    def image_seeds(self, indices: torch.Tensor) -> list[int]:
        return [self.seed * 1_000_003 + int(i) for i in indices]

    def purify(self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.dip_batch):
            x = images[start : start + self.dip_batch]
            rule = StitchRule(x, classifier, self.rule)
            fit_dip(
                x, self.image_seeds(indices[start : start + self.dip_batch]), self.dip, rule, observe_tail=self.rule.k
            )
            out.append(rule.result())
        return torch.cat(out)


register_defense("dip_stitch", DIPStitch)
