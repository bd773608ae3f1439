"""The latent-space attack on a defense that projects onto a generator's range."""

import torch
from torch import nn

from dipdefense.attacks.adaptive import as_defended, still_right
from dipdefense.attacks.base import Attack, AttackError, check_eps


class LatentSpaceAttack(Attack):
    """Athalye, Carlini & Wagner 2018 ("Obfuscated Gradients Give a False Sense of Security",
    Sec. 5.3.1), their attack on Defense-GAN, here against INC (paper 004, Algorithm 1): a
    defense that projects x onto G's range and refuses what lies far from it is attacked on
    that range. From the defense's own projection z*(x), Adam on z lowers C&W's margin loss
    on G(z) (Carlini & Wagner 2017, Eq. f6: max(Z_y - max_{j != y} Z_j, -kappa)); the
    adversarial image is G(z) itself, which the defense projects close to itself and does not
    refuse. G(z) is as far from x as it needs to be, so this is an unbounded attack, for the
    Carlini et al. 2019 sanity check (an unbounded attack reaches ~0%) where BPDA's pixel steps
    leave the range and are refused. Every ``check_every`` steps G(z) goes through the
    defense's true forward pass; the first that fools is kept (``last_history`` as in bpda_pgd).

    Distance measure: none (unbounded; eps must be the whole range, ``--eps 255``)

    Arguments:
        eps (float): must be 1.0 (255/255). Required.
        steps (int): Adam steps on z. Default: 200.
        lr (float): Adam learning rate on z (0.05-0.1 left 1 of 32 Fashion-MNIST images stuck
            in a trouser-only valley of the VAE's range; 0.3 broke all by step 40). Default: 0.3.
        kappa (float): the margin past which the loss stops pushing. Default: 5.0.
        check_every (int): steps between checks through the defense. Default: 20.
    """

    name = "latent_space"
    library = "dip-defense"
    norm = "linf"
    eps_mode = "required"
    adaptive_only = True
    needs_projection = True  # it needs the defense's generator (``project``, ``generator``), no gradient through it

    def __init__(
        self, eps: float, steps: int = 200, lr: float = 0.3, kappa: float = 5.0, check_every: int = 20
    ) -> None:
        self.eps = check_eps(self.name, eps, self.norm)
        if self.eps < 1:
            raise AttackError(f"{self.name}: an unbounded attack (its images are G(z), not x + delta): use --eps 255")
        if int(steps) < 0 or int(check_every) < 1 or lr <= 0:
            raise AttackError(
                f"{self.name}: steps >= 0, check_every >= 1 and lr > 0 are accepted; "
                f"got steps={steps}, check_every={check_every}, lr={lr}"
            )
        self.steps, self.lr, self.kappa, self.check_every = int(steps), float(lr), float(kappa), int(check_every)
        self.last_history: torch.Tensor | None = None

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        defended = as_defended(model)
        purifier = defended.purifier
        if not hasattr(purifier, "project"):
            raise AttackError(
                f"{self.name}: the defense {getattr(purifier, 'name', purifier)!r} does not project onto a "
                "generator's range; it attacks inc"
            )
        indices = defended.indices_for(images)
        with torch.no_grad():
            z = purifier.project(images, indices).z.clone()
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.lr)
        history = torch.zeros(len(images), self.steps // self.check_every + 1, dtype=torch.bool)
        broken = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        first = images.clone()
        for k in range(self.steps + 1):
            if k % self.check_every == 0:
                with torch.no_grad():
                    candidate = purifier.generator(z).clamp(0, 1)
                    right = still_right(defended, defended(candidate), labels)  # seeded as defended(candidate) is
                history[:, k // self.check_every] = right.cpu()
                newly = ~right & ~broken
                first[newly] = candidate[newly]
                broken |= ~right
            if k == self.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            logits = defended.victim(purifier.generator(z).clamp(0, 1)).float()
            true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
            other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
            (true - other).clamp_min(-self.kappa).sum().backward()
            optimizer.step()
        self.last_history = history
        with torch.no_grad():
            last = purifier.generator(z).clamp(0, 1)
        return torch.where(broken.view(-1, 1, 1, 1), first, last)
