"""Attacks that know the defense: BPDA-PGD, its EOT form, and the random-noise baseline.

Each runs on a ``defenses.defended.DefendedClassifier`` (a bare classifier is taken as the
undefended one) and runs the defense's true forward pass at every iterate. An image counts as
broken as soon as any iterate fools the defended victim (a seeded defense is deterministic per
image, so an attacker who checks each step keeps the first that succeeds; DESIGN.md, "Threat
models"); that iterate is returned. ``last_history`` [B, steps + 1] says, for every iterate,
whether the defended victim still answered right (or refused the input), so the report can give
both the any-iterate accuracy and the last iterate's after every iteration (paper 002 Fig. 4).
"""

import torch
from torch import nn

from dipdefense.attacks.base import Attack, AttackError, check_eps

# Part of the adaptive cache key: bumped whenever a fix changes what an attack through a defense
# computes, so cached adversarials of the old code are never reused. 2: the Glow detector's
# gradient reaches the input (before, its latents were computed without one).
ADAPTIVE_REVISION = 2


def as_defended(model: nn.Module):
    from dipdefense.defenses.base import IdentityDefense
    from dipdefense.defenses.defended import DefendedClassifier

    return model if isinstance(model, DefendedClassifier) else DefendedClassifier(model, IdentityDefense())


def still_right(defended, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    right = logits.argmax(1) == labels
    if defended.last_rejected is not None:  # a refused input is a defended one
        right = right | defended.last_rejected.to(right.device)
    return right


class BPDAPGD(Attack):
    """BPDA-PGD, Athalye, Carlini & Wagner 2018 ("Obfuscated Gradients Give a False Sense of
    Security", Sec. 4.1) as paper 002 Sec. 4.3.1 / Fig. 4 runs it: L-inf PGD (Madry et al. 2018)
    on victim(defense(x)), the defense's true forward pass at every iterate, its backward the
    defense's own gradient where it has one and the identity where it has none (advertorch's
    ``BPDAWrapper``). With ``eot`` > 0 it is EOT (Athalye et al. 2018, Sec. 4; "Synthesizing
    Robust Adversarial Examples"): the gradient is the mean over ``eot`` draws of the defense's
    randomness with seeds the evaluation never uses (the attacker knows the algorithm, not the
    seed), and each iterate is judged with the evaluation's own seed. Against a detector or INC
    the loss also pays ``evasion_weight`` times the cost of being caught
    (``DefendedClassifier.evasion_penalty``), and a refused input counts as not fooled.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        steps (int): PGD iterations (paper 002 Fig. 4 reports iteration 15). Default: 15.
        alpha (float | None): step size; None takes eps/4 (2/255 at eps 8/255, torchattacks' PGD
            step, and a quarter of the range per step for the unbounded check); an L2 length with
            step="l2". Default: None.
        random_start (bool): start from a uniform random point of the eps ball. Default: True.
        eot (int): defense draws averaged per gradient; 0 uses the evaluation's own draw. Default: 0.
        evasion_weight (float): weight of the detector / rejection term. Default: 1.0.
        select (str): "first" returns the first iterate that fools, "last" the last iterate
            (then it is torchattacks' PGD, step for step, on an undefended model). Default: "first".
        step (str): "sign", the L-inf steepest step alpha * sign(grad) (Madry et al. 2018), or
            "l2", a step of L2 length alpha along grad / ||grad||_2. Default: "sign".
        on_range (bool): take each step from the defense's own output for the iterate rather
            than from the iterate, so the attack walks on the defense's range: against a defense
            that projects onto a generator and refuses what lies far from it (INC), sign steps
            leave the range and are refused, while iterates on it are accepted (Athalye et al.
            2018, Sec. 5.3, attack Defense-GAN on the generator's range). Needs eot=0. Default: False.
    """

    name = "bpda_pgd"
    library = "dip-defense"  # this project's loop; the BPDA backward is advertorch's BPDAWrapper
    norm = "linf"
    eps_mode = "required"
    needs_gradient = True
    uses_bpda = True  # BPDA stands in where the defense has no gradient
    adaptive_only = True

    def __init__(
        self,
        eps: float,
        steps: int = 15,
        alpha: float | None = None,
        random_start: bool = True,
        eot: int = 0,
        evasion_weight: float = 1.0,
        select: str = "first",
        step: str = "sign",
        on_range: bool = False,
    ) -> None:
        self.eps = check_eps(self.name, eps, self.norm)
        if step not in ("sign", "l2"):
            raise AttackError(f"{self.name}: step is 'sign' or 'l2'; got {step!r}")
        if on_range and int(eot):
            raise AttackError(f"{self.name}: on_range=True steps from the evaluation's own draw; it needs eot=0")
        self.step, self.on_range = step, bool(on_range)
        if int(steps) < 0 or int(eot) < 0:
            raise AttackError(f"{self.name}: steps >= 0 and eot >= 0 are accepted; got steps={steps}, eot={eot}")
        if select not in ("first", "last"):
            raise AttackError(f"{self.name}: select is 'first' or 'last'; got {select!r}")
        self.steps, self.eot, self.select = int(steps), int(eot), select
        self.alpha = self.eps / 4 if alpha is None else float(alpha)
        self.random_start, self.evasion_weight = bool(random_start), float(evasion_weight)
        self.last_history: torch.Tensor | None = None

    def _gradient(self, defended, adv: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        from dipdefense.defenses.defended import draw_indices

        if self.eot:  # all draws of all images in one defense batch
            x = adv.detach().repeat(self.eot, 1, 1, 1).requires_grad_(True)
            idx = torch.cat([draw_indices(indices, d) for d in range(1, self.eot + 1)])
            y = labels.repeat(self.eot)
        else:
            x, idx, y = adv.detach().requires_grad_(True), indices, labels
        purified = defended.purified(x, idx)
        loss = nn.functional.cross_entropy(defended.victim(purified).float(), y, reduction="sum")
        penalty = defended.evasion_penalty(x, purified)
        if penalty is not None and self.evasion_weight:
            loss = loss - self.evasion_weight * penalty.sum()
        (grad,) = torch.autograd.grad(loss, x)
        return grad.view(max(self.eot, 1), *adv.shape).mean(0)

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        defended = as_defended(model)
        adv = images.clone()
        if self.random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
        history = torch.zeros(len(images), self.steps + 1, dtype=torch.bool, device=images.device)
        broken = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        first = images.clone()
        for k in range(self.steps + 1):
            # Bound to dataset indices, every iterate of an image shares its seed; unbound, each
            # iterate is seeded by its own bytes, as a later defended(adv) call will seed it.
            indices = defended.indices_for(adv)
            grad = purified = None
            if self.eot or k == self.steps:
                with torch.no_grad():
                    right = still_right(defended, defended(adv, indices), labels)
                if k < self.steps:
                    grad = self._gradient(defended, adv, labels, indices)
            else:  # the evaluation's own draw: one forward gives the verdict and the gradient
                x = adv.detach().requires_grad_(True)
                purified = defended.purified(x, indices)
                logits = defended.victim(purified).float()
                right = still_right(defended, logits.detach(), labels)
                loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
                penalty = defended.evasion_penalty(x, purified)
                if penalty is not None and self.evasion_weight:
                    loss = loss - self.evasion_weight * penalty.sum()
                (grad,) = torch.autograd.grad(loss, x)
            history[:, k] = right
            newly = ~right & ~broken
            first[newly] = adv[newly].detach()
            broken |= ~right
            if grad is None:
                break
            if self.step == "l2":
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny).view(
                    -1, *[1] * (grad.dim() - 1)
                )
            else:
                direction = grad.sign()
            start = purified.detach().to(adv.dtype) if self.on_range else adv.detach()
            adv = start + self.alpha * direction
            adv = (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1)
        self.last_history = history.cpu()
        if self.select == "last":
            return adv.detach()
        return torch.where(broken.view(-1, 1, 1, 1), first, adv.detach())


class EOTPGD(BPDAPGD):
    """EOT-PGD, Athalye et al. 2018 ("Synthesizing Robust Adversarial Examples"; "Obfuscated
    Gradients", Sec. 4): ``bpda_pgd`` with the gradient averaged over ``eot`` draws of the
    defense's randomness, for the randomised (seeded) DIP and INC defenses. The draws use seeds
    the evaluation never uses; every iterate is judged with the evaluation's own.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units. Required.
        steps (int): PGD iterations. Default: 15.
        alpha (float | None): step size; None takes eps/4. Default: None.
        random_start (bool): start from a uniform random point of the eps ball. Default: True.
        eot (int): defense draws averaged per gradient, all in one defense batch. Default: 4.
        evasion_weight (float): weight of the detector / rejection term. Default: 1.0.
        select (str): "first" fooling iterate or "last" iterate. Default: "first".
    """

    name = "eot_pgd"

    def __init__(
        self,
        eps: float,
        steps: int = 15,
        alpha: float | None = None,
        random_start: bool = True,
        eot: int = 4,
        evasion_weight: float = 1.0,
        select: str = "first",
    ) -> None:
        if int(eot) < 1:
            raise AttackError(f"{self.name}: eot >= 1 draws are accepted; got {eot} (eot=0 is bpda_pgd)")
        super().__init__(eps, steps, alpha, random_start, eot, evasion_weight, select)


class RandomNoise(Attack):
    """The random-noise baseline of Carlini et al. 2019 ("On Evaluating Adversarial Robustness",
    Sec. 5): ``tries`` draws of uniform random-sign noise at the full L-inf budget (a random
    corner of the eps ball), each through the defense's true forward pass with the evaluation's
    seed, scored like ``bpda_pgd``: an image is broken if any draw fools the defended victim.
    It tells how much of what an any-iterate attack finds is luck (a DIP fit is chaotic in its
    input), with as many tries as the attack has iterates.

    Distance measure: Linf

    Arguments:
        eps (float): noise amplitude, in [0, 1] pixel units. Required.
        tries (int): noise draws, the count of ``bpda_pgd``'s iterates (steps + 1). Default: 16.
    """

    name = "random_noise"
    library = "dip-defense"
    norm = "linf"
    eps_mode = "required"
    adaptive_only = True

    def __init__(self, eps: float, tries: int = 16) -> None:
        self.eps = check_eps(self.name, eps, self.norm)
        if int(tries) < 1:
            raise AttackError(f"{self.name}: tries >= 1 is accepted; got {tries}")
        self.tries = int(tries)
        self.last_history: torch.Tensor | None = None

    @torch.no_grad()
    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        defended = as_defended(model)
        history = torch.zeros(len(images), self.tries, dtype=torch.bool, device=images.device)
        broken = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        first = images.clone()
        for k in range(self.tries):
            noisy = (images + self.eps * torch.randint_like(images, 2).mul(2).sub(1)).clamp(0, 1)
            right = still_right(defended, defended(noisy), labels)  # seeded as defended(noisy) always is
            history[:, k] = right
            newly = ~right & ~broken
            first[newly] = noisy[newly]
            broken |= ~right
        self.last_history = history.cpu()
        return torch.where(broken.view(-1, 1, 1, 1), first, noisy)
