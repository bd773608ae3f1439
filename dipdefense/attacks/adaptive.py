"""Attacks that know the defense: BPDA-PGD, its EOT form, and the random-noise baseline.

Each runs on a ``defenses.defended.DefendedClassifier`` (a bare classifier is taken as the
undefended one) and runs the defense's true forward pass at every iterate. An image counts as
broken as soon as any iterate fools the defended victim (a seeded defense is deterministic per
image, so an attacker who checks each step keeps the first that succeeds; DESIGN.md, "Threat
models"); that iterate is returned. ``last_history`` [B, steps + 1] says, for every iterate,
whether the defended victim still answered right (or refused the input), so the report can give
both the any-iterate accuracy and the last iterate's after every iteration (paper 002 Fig. 4).

A DIP defense is deterministic per image seed but shattered: its output changes chaotically with
imperceptible input changes (DESIGN.md, "Threat models"), so its gradient, BPDA's or the exact
one, says little about the loss a step away. ``bpda_pgd`` and ``eot_pgd`` therefore also take:
- another backward pass: the defense's pathwise gradient ("exact") or its selection rule
  ("rule"), through ``DefendedClassifier.purified(..., gradient=...)``, or none: "nes", the
  antithetic NES estimate from the true defense's forward passes alone (Ilyas et al. 2018,
  "Black-box Adversarial Attacks with Limited Queries and Information", Sec. 2.2; SPSA, Uesato
  et al. 2018, "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks", Sec. 3.1,
  is the alternative, with Rademacher directions and a finite-difference step);
- EOT over small Gaussian input noise (Athalye et al. 2018, "Synthesizing Robust Adversarial
  Examples": the gradient of the loss expected over a distribution of transformations), with
  or without draws of the defense's seed (``seed_draws``: whether the attacker knows the seed);
- resubmission: after the attack, every image still defended is submitted again as ``resubmit``
  noisy copies of the final iterate, and counts broken if any copy fools (Croce et al. 2022,
  "Evaluating the Adversarial Robustness of Adaptive Test-time Defenses", Sec. 3: against a
  randomised or shattered defense, report the worst case over repeated runs).
"""

import inspect

import torch
from torch import nn

from dipdefense.attacks.base import Attack, AttackError, check_eps

# Part of the adaptive cache key: bumped whenever a fix changes what an attack through a defense
# computes, so cached adversarials of the old code are never reused. 2: the Glow detector's
# gradient reaches the input (before, its latents were computed without one).
ADAPTIVE_REVISION = 2

# NES's default smoothing scale, in [0, 1] pixel units: one grey level. Ilyas et al. 2018 used
# sigma = 0.001 against smooth ImageNet classifiers; against a shattered DIP fit the loss is as
# rough at 1e-5 as at 1/255, so sigma sets the scale of the smoothed loss whose gradient NES
# follows rather than the accuracy of a derivative. Provisional: to be measured on the DIP
# defenses (cosine of successive estimates, success rate against sigma).
NES_SIGMA = 1 / 255

# backward: how the gradient passes the defense ("nes": it does not, NES estimates it).
BACKWARDS = ("identity", "exact", "rule", "nes")
RESUBMIT_OVER = ("noise", "seeds")


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

    Against a shattered defense (a DIP fit, DESIGN.md "Threat models"): ``backward`` "exact"
    differentiates through the unrolled fit (``dip.pathwise``), "rule" takes the selection
    rule's algebra with a measured stand-in for each iterate's Jacobian (``dip.rule_aware``),
    "nes" estimates the gradient of the Gaussian-smoothed loss from forward passes alone (Ilyas et al. 2018, antithetic NES; SPSA, Uesato et al. 2018,
    is the alternative); ``noise`` makes the EOT draws add small input noise, and with
    ``seed_draws=False`` they all use the evaluation's own seed (the attacker knows it);
    ``resubmit`` resubmits the final iterate of every image still defended, as noisy copies or
    under fresh seeds, and keeps the first copy that fools (Croce et al. 2022, worst case over
    runs). ``last_resubmit`` [B, resubmit] then says whether the defended victim was still right
    on each copy (False for images broken before resubmission, which are not resubmitted), so a
    report can give the final iterate's accuracy (``last_history[:, -1]``) and the worst case
    over copies; None when ``resubmit`` = 0.

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
            2018, Sec. 5.3, attack Defense-GAN on the generator's range). Needs eot=0 and
            backward="identity". Default: False.
        backward (str): the backward pass through a defense without a gradient of its own:
            "identity" (BPDA), "exact" (the pathwise gradient through the unrolled DIP fit),
            "rule" (the fit's selection rule with a stand-in Jacobian), all passed to
            ``DefendedClassifier.purified(..., gradient=backward)`` (this overrides the defended
            model's own setting), or "nes": no backward, the antithetic NES estimate
            g = 1/(2 n sigma) sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i, u_i ~ N(0, I),
            L the per-image loss through the true defense (forward passes only), the 2n copies
            of all images in one defense batch, all with the evaluation's own seed (with eot > 0
            and seed_draws, pair i uses unused draw i mod eot + 1). Default: "identity".
        nes_samples (int): NES pairs n per step (2n defense fits per image per step). Default: 8.
        nes_sigma (float): NES smoothing scale, in [0, 1] pixel units (``NES_SIGMA``). Default: 1/255.
        noise (float): standard deviation of the Gaussian input noise each EOT draw adds to the
            iterate (clamped to [0, 1]) before the defense; the gradient at each noisy copy is
            averaged (the noise is additive, so its Jacobian is the identity). Needs eot >= 1;
            not with backward="nes" (NES already smooths with Gaussian noise of nes_sigma).
            Default: 0.0.
        seed_draws (bool): whether the EOT draws use seeds the evaluation never uses (True: the
            attacker does not know the seed) or all the evaluation's own (False: the attacker
            knows it; then only ``noise`` makes the draws differ, so eot > 1 needs noise > 0).
            Default: True.
        resubmit (int): copies R of the final iterate submitted, after the PGD loop, for every
            image not yet broken, in one defense batch with the evaluation's own seeding; the
            first that fools is returned. 0: none. Default: 0.
        resubmit_scale (float): with resubmit_over="noise", each copy adds uniform noise in
            [-resubmit_scale, resubmit_scale] per pixel, then is projected into the eps ball and
            [0, 1]; in (0, eps]. Default: 1/255.
        resubmit_over (str): "noise", noisy copies under the evaluation's own seed (a shattered
            defense deployed with a fixed seed per image: each copy draws, in effect, a new
            output), or "seeds", the final iterate itself under R seeds the evaluation never uses
            (``draw_indices(idx, d)``, d = 1..R): only meaningful for a defense deployed with a
            random seed per query, since the evaluation judges with its own seed. Default: "noise".
    """

    name = "bpda_pgd"
    library = "dip-defense"  # this project's loop; the BPDA backward is advertorch's BPDAWrapper
    norm = "linf"
    eps_mode = "required"
    needs_gradient = True
    uses_bpda = True  # BPDA stands in where the defense has no gradient
    adaptive_only = True
    # Added after revision 2's cache entries were written: ``params()`` leaves them out at their
    # defaults, so the cache keys (which hold ``params()``) of earlier runs stay what they were.
    _ADDED = (
        "backward",
        "nes_samples",
        "nes_sigma",
        "noise",
        "seed_draws",
        "resubmit",
        "resubmit_scale",
        "resubmit_over",
    )

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
        backward: str = "identity",
        nes_samples: int = 8,
        nes_sigma: float = NES_SIGMA,
        noise: float = 0.0,
        seed_draws: bool = True,
        resubmit: int = 0,
        resubmit_scale: float = 1 / 255,
        resubmit_over: str = "noise",
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
        self._check_smoothing(backward, nes_samples, nes_sigma, noise, seed_draws)
        self._check_resubmit(resubmit, resubmit_scale, resubmit_over)
        self.backward, self.nes_samples, self.nes_sigma = backward, int(nes_samples), float(nes_sigma)
        self.noise, self.seed_draws = float(noise), bool(seed_draws)
        self.resubmit, self.resubmit_scale, self.resubmit_over = int(resubmit), float(resubmit_scale), resubmit_over
        self.last_history: torch.Tensor | None = None
        self.last_resubmit: torch.Tensor | None = None

    def _check_smoothing(self, backward: str, nes_samples: int, nes_sigma: float, noise: float, seed_draws: bool):
        if backward not in BACKWARDS:
            raise AttackError(f"{self.name}: unknown backward {backward!r}; accepted: {', '.join(BACKWARDS)}")
        if self.on_range and backward != "identity":
            raise AttackError(
                f"{self.name}: on_range=True steps from the defense's output with the identity backward; "
                f"it needs backward='identity' (got {backward!r})"
            )
        if int(nes_samples) < 1:
            raise AttackError(f"{self.name}: nes_samples >= 1 (antithetic pairs) is accepted; got {nes_samples}")
        if not float(nes_sigma) > 0 or not torch.isfinite(torch.tensor(float(nes_sigma))):
            raise AttackError(
                f"{self.name}: nes_sigma > 0 (finite, in [0, 1] pixel units) is accepted; got {nes_sigma}"
            )
        if not float(noise) >= 0 or not torch.isfinite(torch.tensor(float(noise))):
            raise AttackError(f"{self.name}: noise >= 0 (finite, in [0, 1] pixel units) is accepted; got {noise}")
        if float(noise) > 0 and self.eot < 1:
            raise AttackError(f"{self.name}: noise={noise} is added to the EOT draws; it needs eot >= 1 (got eot=0)")
        if float(noise) > 0 and backward == "nes":
            raise AttackError(
                f"{self.name}: noise={noise} with backward='nes': NES already smooths with Gaussian noise of "
                "nes_sigma; accepted: noise=0 with backward='nes', or noise > 0 with backward identity/exact/rule"
            )
        if not seed_draws and float(noise) == 0 and self.eot > 1:
            raise AttackError(
                f"{self.name}: seed_draws=False with noise=0 makes all eot={self.eot} draws identical; "
                "accepted: noise > 0, seed_draws=True or eot <= 1"
            )

    def _check_resubmit(self, resubmit: int, resubmit_scale: float, resubmit_over: str) -> None:
        if int(resubmit) < 0:
            raise AttackError(f"{self.name}: resubmit >= 0 (copies; 0: none) is accepted; got {resubmit}")
        if resubmit_over not in RESUBMIT_OVER:
            raise AttackError(
                f"{self.name}: unknown resubmit_over {resubmit_over!r}; accepted: {', '.join(RESUBMIT_OVER)}"
            )
        if int(resubmit) and resubmit_over == "noise" and not 0 < float(resubmit_scale) <= self.eps:
            raise AttackError(
                f"{self.name}: resubmit_scale in (0, eps] = (0, {self.eps:.6g}] is accepted; got {resubmit_scale}"
            )

    def params(self) -> dict:
        params = super().params()
        signature = inspect.signature(type(self).__init__).parameters
        for name in self._ADDED:  # at their defaults, as before they existed (the cache keys)
            if name in params and params[name] == signature[name].default:
                del params[name]
        return params

    def gradient_label(self, defended: nn.Module | None = None) -> str | None:
        """What a results record says for how this attack's gradient passed the defense: "nes"
        for the NES estimate, else the defended model's word for ``backward``
        (``DefendedClassifier.gradient_for``: "bpda-identity", "exact", "bpda-rule", or "full"
        where the defense has a gradient of its own), or None where no defended model is given
        (ask it). "+eot-noise" is appended when the EOT draws add input noise."""
        if self.backward == "nes":
            label = "nes"
        elif defended is None:
            return None
        else:
            label = as_defended(defended).gradient_for(self.backward)
        return label + ("+eot-noise" if self.noise else "")

    def _draw_seeds(self, indices: torch.Tensor, draws: int) -> torch.Tensor:
        """The seed indices of ``draws`` EOT draws of the batch, draw-major."""
        from dipdefense.defenses.defended import draw_indices

        if not self.seed_draws:
            return indices.repeat(draws)
        return torch.cat([draw_indices(indices, d) for d in range(1, draws + 1)])

    def _gradient(self, defended, adv: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.backward == "nes":
            return self._nes_gradient(defended, adv, labels, indices)
        if self.eot:  # all draws of all images in one defense batch
            x = adv.detach().repeat(self.eot, 1, 1, 1)
            if self.noise:  # drawn image-major, so per-image draws (common.per_image_rng) split it
                u = torch.randn(len(adv), self.eot, *adv.shape[1:], device=adv.device, dtype=adv.dtype)
                x = (x + self.noise * u.transpose(0, 1).reshape(x.shape)).clamp(0, 1)
            x = x.requires_grad_(True)
            idx = self._draw_seeds(indices, self.eot)
            y = labels.repeat(self.eot)
        else:
            x, idx, y = adv.detach().requires_grad_(True), indices, labels
        purified = defended.purified(x, idx, gradient=self.backward)
        loss = nn.functional.cross_entropy(defended.victim(purified).float(), y, reduction="sum")
        penalty = defended.evasion_penalty(x, purified)
        if penalty is not None and self.evasion_weight:
            loss = loss - self.evasion_weight * penalty.sum()
        (grad,) = torch.autograd.grad(loss, x)
        return grad.view(max(self.eot, 1), *adv.shape).mean(0)

    @torch.no_grad()
    def _nes_gradient(self, defended, adv: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The antithetic NES estimate (Ilyas et al. 2018, Sec. 2.2) of the loss's gradient, from
        the 2n noisy copies of every image in one defense batch (forward passes only)."""
        from dipdefense.defenses.defended import draw_indices

        n, sigma, shape = self.nes_samples, self.nes_sigma, adv.shape[1:]
        u = torch.randn(len(adv), n, *shape, device=adv.device, dtype=adv.dtype)  # image-major: per-image draws
        signed = torch.cat([u, -u], dim=1).transpose(0, 1)  # [2n, B, ...]: +u_1..+u_n, -u_1..-u_n
        x = (adv.detach().unsqueeze(0) + sigma * signed).clamp(0, 1).reshape(-1, *shape)
        if self.eot and self.seed_draws:  # both copies of a pair share a seed: the pair measures the input
            pairs = [draw_indices(indices, i % self.eot + 1) for i in range(n)]
        else:
            pairs = [indices] * n
        purified = defended.purified(x, torch.cat(pairs + pairs))
        loss = nn.functional.cross_entropy(defended.victim(purified).float(), labels.repeat(2 * n), reduction="none")
        penalty = defended.evasion_penalty(x, purified)
        if penalty is not None and self.evasion_weight:
            loss = loss - self.evasion_weight * penalty.float()
        loss = loss.view(2, n, len(adv))
        difference = (loss[0] - loss[1]).T.to(u.dtype)  # [B, n]
        return (difference.view(*difference.shape, *[1] * len(shape)) * u).sum(1) / (2 * n * sigma)

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        defended = as_defended(model)
        self.last_resubmit = None
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
            if self.eot or self.backward == "nes" or k == self.steps:
                with torch.no_grad():
                    right = still_right(defended, defended(adv, indices), labels)
                if k < self.steps:
                    grad = self._gradient(defended, adv, labels, indices)
            else:  # the evaluation's own draw: one forward gives the verdict and the gradient
                x = adv.detach().requires_grad_(True)
                purified = defended.purified(x, indices, gradient=self.backward)
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
            out = adv.detach()
            unbroken = right  # the last iterate's verdict
        else:
            out = torch.where(broken.view(-1, 1, 1, 1), first, adv.detach())
            unbroken = ~broken
        if self.resubmit:
            out = self._resubmit(defended, images, labels, adv.detach(), unbroken, out)
        return out

    @torch.no_grad()
    def _resubmit(
        self,
        defended,
        images: torch.Tensor,
        labels: torch.Tensor,
        adv: torch.Tensor,
        unbroken: torch.Tensor,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """Submit ``resubmit`` copies of the final iterate ``adv`` of each unbroken image, all in
        one defense batch (copy-major), seeded as the evaluation seeds them; ``out`` with the
        first fooling copy of each image it breaks. Sets ``last_resubmit``."""
        from dipdefense.defenses.defended import draw_indices

        copies, rows, shape = self.resubmit, unbroken.nonzero().flatten(), images.shape[1:]
        verdict = torch.zeros(len(images), copies, dtype=torch.bool, device=images.device)
        self.last_resubmit = verdict.cpu()
        if not len(rows):
            return out
        if self.resubmit_over == "noise":
            scale = self.resubmit_scale  # drawn for the whole batch, image-major: per-image draws
            u = torch.empty(len(images), copies, *shape, device=images.device, dtype=adv.dtype).uniform_(-scale, scale)
            clean = images[rows].unsqueeze(1)
            candidates = (clean + (adv[rows].unsqueeze(1) + u[rows] - clean).clamp(-self.eps, self.eps)).clamp(0, 1)
            batch = candidates.transpose(0, 1).reshape(-1, *shape)
            if not defended.is_bound:
                idx = defended.indices_for(batch)  # each copy by its own bytes, as defended(copy) will seed it
            else:  # bound: the image's dataset index (as bound_to(indices.repeat(R)) would give)
                idx = defended.indices_for(adv)[rows.cpu()].repeat(copies)
        else:  # the final iterate itself under R seeds the evaluation never uses
            candidates = adv[rows].unsqueeze(1).expand(len(rows), copies, *shape)
            batch = candidates.transpose(0, 1).reshape(-1, *shape)
            own = defended.indices_for(adv)[rows.cpu()]
            idx = torch.cat([draw_indices(own, d) for d in range(1, copies + 1)])
        right = still_right(defended, defended(batch, idx), labels[rows].repeat(copies)).view(copies, len(rows)).T
        verdict[rows] = right
        self.last_resubmit = verdict.cpu()
        fooled = ~right.all(dim=1)
        if fooled.any():
            pick = (~right).float().argmax(dim=1)  # the first copy that fools
            chosen = candidates[torch.arange(len(rows), device=rows.device), pick]
            out = out.clone()
            out[rows[fooled]] = chosen[fooled].to(out.dtype)
        return out


class EOTPGD(BPDAPGD):
    """EOT-PGD, Athalye et al. 2018 ("Synthesizing Robust Adversarial Examples"; "Obfuscated
    Gradients", Sec. 4): ``bpda_pgd`` with the gradient averaged over ``eot`` draws of the
    defense's randomness, for the randomised (seeded) DIP and INC defenses. The draws use seeds
    the evaluation never uses (``seed_draws``), optionally with small input noise (``noise``),
    for a defense that is shattered rather than random; every iterate is judged with the
    evaluation's own seed.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units. Required.
        steps (int): PGD iterations. Default: 15.
        alpha (float | None): step size; None takes eps/4. Default: None.
        random_start (bool): start from a uniform random point of the eps ball. Default: True.
        eot (int): defense draws averaged per gradient, all in one defense batch. Default: 4.
        evasion_weight (float): weight of the detector / rejection term. Default: 1.0.
        select (str): "first" fooling iterate or "last" iterate. Default: "first".
        noise (float): Gaussian input noise of each draw (``bpda_pgd``). Default: 0.0.
        seed_draws (bool): draws over unused seeds (True) or the evaluation's own. Default: True.
        backward (str): "identity", "exact", "rule" or "nes" (``bpda_pgd``). Default: "identity".
        nes_samples (int): NES pairs per step. Default: 8.
        nes_sigma (float): NES smoothing scale. Default: 1/255.
        resubmit (int): copies of the final iterate resubmitted (``bpda_pgd``). Default: 0.
        resubmit_scale (float): uniform noise of each copy, in (0, eps]. Default: 1/255.
        resubmit_over (str): "noise" or "seeds" (``bpda_pgd``). Default: "noise".
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
        noise: float = 0.0,
        seed_draws: bool = True,
        backward: str = "identity",
        nes_samples: int = 8,
        nes_sigma: float = NES_SIGMA,
        resubmit: int = 0,
        resubmit_scale: float = 1 / 255,
        resubmit_over: str = "noise",
    ) -> None:
        if int(eot) < 1:
            raise AttackError(f"{self.name}: eot >= 1 draws are accepted; got {eot} (eot=0 is bpda_pgd)")
        super().__init__(
            eps,
            steps,
            alpha,
            random_start,
            eot,
            evasion_weight,
            select,
            backward=backward,
            nes_samples=nes_samples,
            nes_sigma=nes_sigma,
            noise=noise,
            seed_draws=seed_draws,
            resubmit=resubmit,
            resubmit_scale=resubmit_scale,
            resubmit_over=resubmit_over,
        )


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
