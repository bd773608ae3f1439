"""``inc``: Invert-and-Classify (Ilyas et al., paper 004, Sec. 2.1, Algorithm 1)."""

import math
from typing import Any

import torch
from torch import nn

from dipdefense.common.checkpoint_io import resolve_repo_path
from dipdefense.common.errors import UserError
from dipdefense.defenses.base import Purified, Purifier
from dipdefense.defenses.registry import register_defense
from dipdefense.manifold.inversion import Inversion, invert


class InvertAndClassify(Purifier):
    """Project x onto the range of a pretrained generator G by gradient descent in z, and
    let the victim classify G(z*). An input whose projection is far, ||G(z*) - x||_2 >= eta,
    is *rejected* as unnatural: records carry ``inversion_distance`` and ``rejected``, and
    results get the rejected share and a rejection-aware accuracy (a rejected attacked input
    counts as defended, a rejected clean one as wrong) besides the plain accuracy of C(G(z*)).

    Arguments:
        generator: VAE checkpoint (``train.py --config vae_fmnist.yaml --export ...``); its
            decoder is G. Default: "checkpoints/vae_fmnist.ckpt".
        steps: T gradient steps. Default: 1000.
        lr: Adam learning rate. Default: 0.1 (paper 004 on MNIST).
        restarts: R random starts; the closest projection wins. Default: 4.
        eta: rejection threshold on ||G(z*) - x||_2 (pixels in [0, 1]); None takes the
            checkpoint's ``inversion_eta``, calibrated on held-out clean images (the 95th
            percentile of their distances); ``inf`` never rejects. Default: None.
        batch: images inverted at once (speed only). Default: 500.
        seed: seeds each image's starting latents with its dataset index. Default: 0.
    """

    name = "inc"
    seeded = True

    def __init__(
        self,
        generator: str = "checkpoints/vae_fmnist.ckpt",
        steps: int = 1000,
        lr: float = 0.1,
        restarts: int = 4,
        eta: float | None = None,
        batch: int = 500,
        seed: int = 0,
    ) -> None:
        from dipdefense.nets import load_vae

        if steps < 0 or restarts < 1 or batch < 1 or lr <= 0:
            raise UserError(
                f"inc: steps >= 0, restarts >= 1, batch >= 1 and lr > 0 are accepted; got steps={steps}, "
                f"restarts={restarts}, batch={batch}, lr={lr}"
            )
        self.generator_path = resolve_repo_path(generator)
        self.vae = load_vae(self.generator_path).requires_grad_(False)
        if eta is None:
            eta = self.vae.checkpoint_config.get("inversion_eta")
            if eta is None:
                raise UserError(
                    f"inc: {self.generator_path} has no calibrated inversion_eta; give eta (a distance, or inf "
                    "to never reject), or export the VAE with train.py, which calibrates it"
                )
        if not eta > 0:
            raise UserError(f"inc: eta must be a positive distance (or inf), got {eta}")
        self.steps, self.lr, self.restarts, self.eta, self.batch, self.seed = steps, lr, restarts, eta, batch, seed

    def params(self) -> dict[str, Any]:
        return {
            "generator": str(self.generator_path),
            **{k: v for k, v in self.vae.checkpoint_config.items() if k in ("arch", "latent_dim", "hidden")},
            "steps": self.steps,
            "lr": self.lr,
            "restarts": self.restarts,
            "eta": self.eta if math.isfinite(self.eta) else "inf",
            "seed": self.seed,
        }

    def to(self, device: torch.device | str) -> "InvertAndClassify":
        self.vae = self.vae.to(device)
        return self

    @property
    def generator(self) -> nn.Module:
        """G: [N, k] latents to images (for attacks on its range, ``dipdefense/attacks/latent_space.py``)."""
        return self.vae.decode

    def project(self, images: torch.Tensor, indices: torch.Tensor) -> Inversion:
        """z*, G(z*) and ||G(z*) - x||_2 for each image (Algorithm 1), ``batch`` images at a time."""
        expected = tuple(self.vae.image_shape)
        if tuple(images.shape[1:]) != expected:
            raise UserError(f"inc: the generator makes {expected} images, the inputs are {tuple(images.shape[1:])}")
        self.vae = self.vae.to(images.device)
        parts = [
            invert(
                self.vae.decode,
                images[start : start + self.batch],
                self.vae.latent_dim,
                self.steps,
                self.lr,
                self.restarts,
                indices=indices[start : start + self.batch],
                seed=self.seed,
            )
            for start in range(0, len(images), self.batch)
        ]
        return Inversion(
            torch.cat([p.z for p in parts]),
            torch.cat([p.reconstruction for p in parts]),
            torch.cat([p.distance for p in parts]),
        )

    def purify_detailed(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> Purified:
        result = self.project(images, indices)
        details = [{"inversion_distance": float(d), "rejected": bool(d >= self.eta)} for d in result.distance]
        return Purified(result.reconstruction.clamp(0, 1), details, {})


register_defense(InvertAndClassify.name, InvertAndClassify)
