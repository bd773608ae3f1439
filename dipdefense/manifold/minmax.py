"""The min-max "overpowered" attack on a generator's range (paper 004, Sec. 2.2 and 4.3).

Find pairs (z, z') whose images are close but whose classifications are far (Eq. 1-2):

    sup_{z, z'} ||C(G(z)) - C(G(z'))||_2^2   s.t.  ||G(z) - G(z')||_2^2 <= eta^2,

through the Lagrangian of Eq. 9, inf_{lambda <= 0} sup_{z, z'} f + lambda * (d^2 - eta^2).
Here ``penalty`` = -lambda >= 0 and the constraint is divided by eta^2, so the same step size
suits any image size: L = f - penalty * (d^2 / eta^2 - 1). Alternating steps: Adam ascent on
(z, z') (as midpoint and half-difference), then projected gradient descent of L on the multiplier, with a much larger step
("the lambda-player's payoff is linear"). Every pair has its own multiplier, and all pairs are
one batch (Adam is per coordinate, the objective a sum over pairs, so pairs do not interact).
C(.) is the softmax output. eta is given per pixel-channel: paper 004 uses eta^2 = 2.46 on
64x64x3 CelebA in [-1, 1], a mean squared difference of 2e-4, i.e. 5e-5 for images in [0, 1];
a pair is *valid* when its mean squared difference is below 5e-4 in [-1, 1] (1.25e-4 in [0, 1]).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

Generator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MinMaxResult:
    """z, z_prime: [P, k]; penalty: the multipliers, [P]; the pair statistics (per pair,
    from :func:`pair_statistics`); history: one dict per ``log_every`` steps."""

    z: torch.Tensor
    z_prime: torch.Tensor
    penalty: torch.Tensor
    stats: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return summarise_pairs(self.stats)


def output_gap(classifier: nn.Module, images: torch.Tensor, images_prime: torch.Tensor) -> torch.Tensor:
    """||softmax C(x) - softmax C(x')||_2^2 per pair, the objective of Eq. 1 (and the
    adversariality term of Eq. 10)."""
    probs = classifier(torch.cat([images, images_prime])).float().softmax(1)
    p, q = probs.chunk(2)
    return (p - q).pow(2).sum(1)


@torch.no_grad()
def pair_statistics(
    generator: Generator,
    classifier: nn.Module,
    z: torch.Tensor,
    z_prime: torch.Tensor,
    valid_per_pixel: float = 1.25e-4,
) -> dict[str, torch.Tensor]:
    """Per pair: gap (Eq. 1), mean squared image difference per pixel-channel, valid (below
    ``valid_per_pixel``), KL(C(G(z)) || C(G(z'))), and whether the predicted labels differ."""
    x, x_prime = generator(z), generator(z_prime)
    logits, logits_prime = classifier(torch.cat([x, x_prime])).float().chunk(2)
    log_p, log_q = logits.log_softmax(1), logits_prime.log_softmax(1)
    mean_sq = (x - x_prime).pow(2).flatten(1).mean(1)
    return {
        "gap": (log_p.exp() - log_q.exp()).pow(2).sum(1),
        "mean_sq": mean_sq,
        "valid": mean_sq < valid_per_pixel,
        "kl": F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(1),
        "different": logits.argmax(1) != logits_prime.argmax(1),
    }


def summarise_pairs(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Paper 004's figures: the share of valid pairs and, among them, the mean KL divergence
    and the share with different predicted labels."""
    valid = stats["valid"]
    n_valid = int(valid.sum())
    return {
        "pairs": len(valid),
        "valid_share": n_valid / max(1, len(valid)),
        "mean_kl": float(stats["kl"][valid].mean()) if n_valid else float("nan"),
        "different_share": float(stats["different"][valid].float().mean()) if n_valid else float("nan"),
        "mean_gap": float(stats["gap"][valid].mean()) if n_valid else float("nan"),
    }


def initial_pairs(num_pairs: int, latent_dim: int, init_spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ N(0, I) and z' = z + init_spread * N(0, I) (z' = z would be a stationary point)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_pairs, latent_dim, generator=g)
    return z, z + init_spread * torch.randn(num_pairs, latent_dim, generator=g)


def minmax_attack(
    generator: Generator,
    classifier: nn.Module,
    z: torch.Tensor,
    z_prime: torch.Tensor,
    steps: int = 10000,
    eta2_per_pixel: float = 5e-5,
    lr: float = 0.01,
    lr_penalty: float = 1.0,
    penalty: torch.Tensor | None = None,
    valid_per_pixel: float = 1.25e-4,
    log_every: int = 0,
    lr_middle: float | None = None,
) -> MinMaxResult:
    """Paper 004's min-max attack (Eq. 3/9) from the starting pairs (z, z_prime).

    Arguments:
        generator: G, [P, k] -> [P, C, H, W] in [0, 1]. classifier: C, returns logits; kept
            as it is (eval mode and frozen parameters are the caller's business: only the
            latents receive gradients here).
        z, z_prime: [P, k] starting latents (:func:`initial_pairs`).
        steps: alternating steps. Default: 10000 (the paper's; its robust training uses 500).
        eta2_per_pixel: eta^2 divided by the number of pixel-channels. Default: 5e-5.
        lr: Adam learning rate of the pair's half-difference (z - z') / 2, and of its midpoint
            unless ``lr_middle`` is given. Default: 0.01.
        lr_penalty: step on the multipliers, per unit of relative violation. Default: 1.0.
        penalty: [P] starting multipliers (>= 0). Default: zeros.
        valid_per_pixel: validity threshold of :func:`pair_statistics`. Default: 1.25e-4.
        log_every: record the valid pairs' mean sqrt(gap) every so many steps (0: never). Default: 0.
        lr_middle: Adam learning rate of the pair's midpoint, which walks it to a decision
            boundary; None: ``lr``. Default: None.
    """
    if z.shape != z_prime.shape or z.ndim != 2:
        raise ValueError(
            f"z and z_prime must both be [pairs, latent_dim], got {list(z.shape)} and {list(z_prime.shape)}"
        )
    if eta2_per_pixel <= 0 or steps < 0:
        raise ValueError(f"eta2_per_pixel must be > 0 and steps >= 0, got {eta2_per_pixel} and {steps}")
    # Adam on the midpoint and half-difference, not on z and z': the constraint's large,
    # oscillating gradient lives in the difference, and with z and z' as Adam's coordinates
    # it would swamp the per-coordinate step size of the weak common-mode gradient that
    # walks the pair to a decision boundary (measured: gaps 10x smaller on a toy problem).
    middle = ((z + z_prime) / 2).detach().clone().requires_grad_(True)
    half_diff = ((z - z_prime) / 2).detach().clone().requires_grad_(True)
    penalty = torch.zeros(len(z), device=z.device) if penalty is None else penalty.detach().clone().to(z.device)
    optimizer = torch.optim.Adam(
        [{"params": [middle], "lr": lr if lr_middle is None else lr_middle}, {"params": [half_diff], "lr": lr}]
    )
    history = []
    with torch.enable_grad():
        for step in range(steps):
            z, z_prime = middle + half_diff, middle - half_diff
            x, x_prime = generator(z), generator(z_prime)
            gap = output_gap(classifier, x, x_prime)
            violation = (x - x_prime).pow(2).flatten(1).mean(1) / eta2_per_pixel - 1
            lagrangian = gap - penalty * violation
            middle.grad, half_diff.grad = torch.autograd.grad(-lagrangian.sum(), [middle, half_diff])  # ascent
            optimizer.step()
            # The inf player: dL/d(penalty) = -violation, so descent raises it while violated.
            penalty = (penalty + lr_penalty * violation.detach()).clamp_min(0)
            if log_every and (step + 1) % log_every == 0:
                valid = violation.detach() * eta2_per_pixel + eta2_per_pixel < valid_per_pixel
                history.append(
                    {
                        "step": step + 1,
                        "valid_share": float(valid.float().mean()),
                        "mean_gap_l2": float(gap.detach()[valid].sqrt().mean()) if valid.any() else float("nan"),
                    }
                )
    z, z_prime = (middle + half_diff).detach(), (middle - half_diff).detach()
    stats = pair_statistics(generator, classifier, z, z_prime, valid_per_pixel)
    return MinMaxResult(z, z_prime, penalty, stats, history)
