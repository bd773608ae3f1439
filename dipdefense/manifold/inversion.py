"""Projection onto the range of a generator by gradient descent in z: the first step of
Invert-and-Classify (paper 004, Sec. 2.1 and Algorithm 1).

z_0 ~ N(0, I); z_t = z_{t-1} - eta_t * grad_z ||x - G(z)||_2^2 (Adam, as the paper's
implementation), T steps, from R random starts; the start with the smallest final distance
wins. All images and restarts are one batch: Adam's update is per coordinate and the loss is
a sum over rows, so each row follows exactly the path it would follow alone.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dipdefense.common.seeding import item_seed

Generator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Inversion:
    """z: [B, k] the best latent per image; reconstruction: G(z), [B, C, H, W];
    distance: ||G(z) - x||_2 per image, [B]."""

    z: torch.Tensor
    reconstruction: torch.Tensor
    distance: torch.Tensor


def seeded_latents(indices: torch.Tensor, restarts: int, latent_dim: int, seed: int) -> torch.Tensor:
    """z_0 ~ N(0, I) per (image, restart), [B, R, k], drawn from a generator seeded by the
    image's dataset index: an image's result does not depend on its batch or shard."""
    rows = []
    for index in indices.tolist():
        g = torch.Generator().manual_seed(item_seed(seed, index))
        rows.append(torch.randn(restarts, latent_dim, generator=g))
    return torch.stack(rows)


def invert(
    generator: Generator,
    images: torch.Tensor,
    latent_dim: int,
    steps: int = 1000,
    lr: float = 0.1,
    restarts: int = 4,
    z_init: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
    seed: int = 0,
) -> Inversion:
    """Invert ``images`` through ``generator`` (Algorithm 1 of paper 004, with restarts).

    Arguments:
        generator: G, mapping [N, k] latents to [N, C, H, W] images.
        images: x, [B, C, H, W].
        latent_dim: k.
        steps: T. Default: 1000 (the paper runs "thousands").
        lr: Adam learning rate. Default: 0.1 (the paper's MNIST value; 0.01 for CelebA).
        restarts: R random starts per image. Default: 4.
        z_init: [B, R, k] starting latents; drawn by :func:`seeded_latents` when None.
        indices: dataset indices that seed z_init (default: 0..B-1). seed: Default: 0.
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"steps must be >= 0 and restarts >= 1, got {steps} and {restarts}")
    batch = len(images)
    if z_init is None:
        indices = torch.arange(batch) if indices is None else indices.cpu()
        z_init = seeded_latents(indices, restarts, latent_dim, seed)
    if z_init.shape != (batch, restarts, latent_dim):
        raise ValueError(f"z_init must be [{batch}, {restarts}, {latent_dim}], got {list(z_init.shape)}")
    target = images.detach().repeat_interleave(restarts, dim=0)
    z = z_init.reshape(batch * restarts, latent_dim).to(images.device).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = (generator(z) - target).pow(2).flatten(1).sum(1)
            loss.sum().backward()
            optimizer.step()
    with torch.no_grad():
        reconstruction = generator(z)
        distance = (reconstruction - target).flatten(1).norm(dim=1).view(batch, restarts)
        best = distance.argmin(dim=1)
        rows = torch.arange(batch, device=best.device) * restarts + best
        return Inversion(z.detach()[rows], reconstruction[rows], distance[torch.arange(batch), best])
