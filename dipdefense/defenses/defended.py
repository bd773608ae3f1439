"""A defended classifier as one ``nn.Module``: ``victim(defense(x))``, the model an attacker who
knows the defense attacks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; paper 002 Sec. 4.3).

The backward pass is the defense's own gradient where it has one (``none``, the autoencoder,
the Glow detector of a gated defense) and BPDA where it has none (Athalye et al. 2018, Sec.
4.1): the DIP defenses and INC are replaced by the identity in the backward pass, as paper 002
App. A did with advertorch's ``BPDAWrapper`` (used here through ``common.advertorch_compat``).
A DIP defense also takes ``gradient="exact"`` (through the unrolled fit, ``dip.pathwise``) and
``gradient="rule"`` (its rule's algebra, ``dip.rule_aware``).

Seed policy. A seeded defense (DIP, INC) draws its randomness from each image's dataset index.
``bound_to(indices)`` gives the indices of the batch an attack works on; every call of that
attack must then pass a batch of that size, row for row (foolbox's HopSkipJump and the BPDA
attacks here do), or, bound to one index, any batch (an attack on one image, such as ART's
HopSkipJump, which batches one image's queries). Images that have no dataset index (a notebook, ``forward`` without a binding)
are seeded by a hash of their float32 bytes: the same image always gets the same defense
output, whatever batch it is in, and any change to an image draws fresh randomness. Draws
other than the evaluation's own (EOT) shift the index by ``DRAW_STRIDE``.
"""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dipdefense.common.errors import UserError
from dipdefense.common.per_image_rng import global_draws
from dipdefense.defenses.base import Defense, Detector, Purifier

HASHED_INDEX_BASE = 1 << 40  # hashed images get indices in [2^40, 2^41): above any data set's
DRAW_STRIDE = 1 << 41  # draw d of image i is seeded as index i + d * DRAW_STRIDE


def hashed_indices(images: torch.Tensor) -> torch.Tensor:
    """A per-image pseudo dataset index from the image's bytes (the seed policy above)."""
    rows = images.detach().float().cpu().contiguous().numpy()
    values = [HASHED_INDEX_BASE + int.from_bytes(hashlib.sha256(r.tobytes()).digest()[:5], "little") for r in rows]
    return torch.tensor(values, dtype=torch.long)


def draw_indices(indices: torch.Tensor, draw: int) -> torch.Tensor:
    """The indices that seed draw ``draw`` of these images (draw 0: the evaluation's own)."""
    return indices + int(draw) * DRAW_STRIDE


class DefendedClassifier(nn.Module):
    """``forward(x) = victim(defense(x))`` for images in [0, 1]; logits out.

    Arguments:
        victim: the classifier (takes images in [0, 1]).
        defense: a purifier, a detector (the victim then sees ``x`` and flagged inputs count as
            rejected) or a ``DETECTOR+PURIFIER`` (flagged inputs are purified).
        bpda: backward through a defense without a gradient of its own: True, by ``gradient``;
            False, a gradient request raises. Default: True.
        gradient: that backward, for a DIP defense: "identity" (BPDA, Athalye et al. 2018, Sec.
            4.1; paper 002 App. A), "exact" (the pathwise gradient through the unrolled fit,
            ``dip.pathwise``) or "rule" (the selection rule's algebra with a stand-in for each
            iterate's Jacobian, ``dip.rule_aware``); INC and other defenses
            without a gradient take only "identity". Default: "identity".

    After each forward ``last_rejected`` holds the inputs the defense refused (INC's inversion
    distance at or above eta, a lone detector's flag), or None for defenses that never refuse.
    """

    def __init__(self, victim: nn.Module, defense: Defense, bpda: bool = True, gradient: str = "identity") -> None:
        super().__init__()
        if getattr(defense, "uses_labels", False):
            raise UserError(
                f"defense {defense.name!r} is given the true labels (an oracle analysis mode): no attacker can face "
                "it; attack it with its oracle off"
            )
        self.victim = victim
        self.defense = defense
        self.bpda = bpda
        check_backward(defense, gradient)
        self.backward_mode = gradient
        self.last_rejected: torch.Tensor | None = None
        self.last_details: list[dict[str, Any]] = []  # the purifier's per-image details, last call
        self._bound: torch.Tensor | None = None

    @property
    def detector(self) -> Detector | None:
        if isinstance(self.defense, Detector):
            return self.defense
        return getattr(self.defense, "detector", None)

    @property
    def purifier(self) -> Purifier | None:
        if isinstance(self.defense, Purifier):
            return getattr(self.defense, "purifier", self.defense)
        return None

    @property
    def differentiable(self) -> bool:
        """Whether the gradient is the defense's own end to end (no BPDA needed)."""
        return self.purifier is None or self.purifier.differentiable

    @property
    def gradient(self) -> str:
        """How gradients pass the defense: "full", "bpda-identity", "exact" or "bpda-rule"."""
        return self.gradient_for(self.backward_mode)

    def gradient_for(self, backward: str) -> str:
        """What ``gradient`` says when a call asks for ``backward`` (an attack's own choice)."""
        if self.differentiable:
            return "full"
        return {"identity": "bpda-identity", "exact": "exact", "rule": "bpda-rule"}[backward]

    @property
    def is_bound(self) -> bool:
        """Whether queries are seeded by a binding (``bound_to``) rather than by their bytes."""
        return self._bound is not None

    @contextmanager
    def bound_to(self, indices: torch.Tensor) -> Iterator["DefendedClassifier"]:
        """Within the block, seed batches by these dataset indices, row for row."""
        previous, self._bound = self._bound, indices.detach().cpu().long()
        try:
            yield self
        finally:
            self._bound = previous

    @contextmanager
    def restricted_to(self, rows: torch.Tensor) -> Iterator["DefendedClassifier"]:
        """Narrow a binding to some of its rows (an attack that drops images it gave up on)."""
        if self._bound is None:
            yield self
            return
        with self.bound_to(self._bound[rows.detach().cpu()]):
            yield self

    def indices_for(self, images: torch.Tensor) -> torch.Tensor:
        """The dataset indices that seed this batch: the binding, else the images' hashes."""
        if self._bound is None:
            return hashed_indices(images)
        if len(self._bound) == 1:  # one image's attack: every query is that image's
            return self._bound.expand(len(images))
        if len(self._bound) != len(images):
            if not self.defense.seeded:  # its output ignores the index (AutoAttack queries the unbroken subset)
                return hashed_indices(images)
            raise ValueError(
                f"the defended model is bound to {len(self._bound)} dataset indices but was called on {len(images)} "
                "images; an attack on a seeded defense must query the whole bound batch, row for row"
            )
        return self._bound

    def purified(
        self, images: torch.Tensor, indices: torch.Tensor | None = None, gradient: str | None = None
    ) -> torch.Tensor:
        """defense(x) with this module's gradient policy (detectors alone: x itself); ``gradient``
        overrides the backward for this call ("identity", "exact", "rule"; an attack's choice)."""
        if gradient is not None and gradient != self.backward_mode:
            check_backward(self.defense, gradient)
        # a defense seeds its own draws (a DIP network's init after torch.manual_seed): an
        # attack's per-image draws must not reach into it
        with global_draws():
            return self._purified(images, indices, gradient or self.backward_mode)

    def _purified(self, images: torch.Tensor, indices: torch.Tensor | None, backward: str) -> torch.Tensor:
        _check_range(images)
        if indices is None:
            indices = self.indices_for(images)
        indices = indices.to(images.device)
        self.last_rejected, self.last_details = None, []
        if isinstance(self.defense, Detector):
            with torch.no_grad():
                self.last_rejected = self.defense.score(images) >= self.defense.threshold
            return images
        detector = self.detector
        if detector is None:
            out, details = self._through(self.defense, images, indices, backward)
            self.last_details = details
            if details and all("rejected" in d for d in details):
                self.last_rejected = torch.tensor([bool(d["rejected"]) for d in details], device=images.device)
            return out
        with torch.no_grad():
            flagged = detector.score(images) >= detector.threshold
        rows = flagged.nonzero().flatten()
        out = images.clone()
        if len(rows):
            out[rows] = self._through(self.purifier, images[rows], indices[rows], backward)[0]
        return out

    def forward(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.victim(self.purified(images, indices))

    def evasion_penalty(self, images: torch.Tensor, purified: torch.Tensor) -> torch.Tensor | None:
        """A differentiable per-image cost of being caught, for attacks that must stay unseen:
        softplus of the detector's logit past its threshold (Carlini & Wagner 2017, "Adversarial
        Examples Are Not Easily Detected": the detector is attacked with the classifier), or
        INC's inversion distance past eta, relative to eta. Its gradient through INC is exact:
        at the optimum z*, d||G(z*) - x|| / dx = (x - G(z*)) / ||G(z*) - x|| (envelope theorem).
        None where nothing can catch an input."""
        detector = self.detector
        if detector is not None:
            threshold = torch.logit(torch.tensor(detector.threshold).clamp(1e-6, 1 - 1e-6)).item()
            return nn.functional.softplus(detector.logit(images) - threshold)
        eta = getattr(self.purifier, "eta", None)
        if eta is None or not torch.isfinite(torch.tensor(float(eta))):
            return None
        distance = (images - purified.detach()).flatten(1).norm(dim=1)
        return torch.relu(distance / eta - 1)

    def _through(
        self, purifier: Purifier, images: torch.Tensor, indices: torch.Tensor, backward: str = "identity"
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """purifier(images) with this module's gradient policy, and its per-image details."""
        if not (torch.is_grad_enabled() and images.requires_grad):
            with torch.no_grad():
                purified = purifier.purify_detailed(images.detach(), self.victim, indices)
            return purified.images.to(images.dtype), purified.details
        if purifier.differentiable:
            return purifier.purify_with_grad(images), []
        if not self.bpda:
            raise UserError(
                f"defense {purifier.name!r} has no gradient of its own (bpda=False): use BPDA (bpda_pgd, eot_pgd) "
                "or a decision-based attack (hopskipjump with threat=adaptive)"
            )
        if backward == "exact":
            return purifier.purify_pathwise(images, self.victim, indices)
        if backward == "rule":
            return purifier.purify_rule_aware(images, self.victim, indices)
        from dipdefense.common.advertorch_compat import BPDAWrapper

        details: list[dict[str, Any]] = []

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                purified = purifier.purify_detailed(x.detach(), self.victim, indices)
            details[:] = purified.details
            return purified.images.to(x.dtype)

        return BPDAWrapper(forward)(images), details  # identity backward (paper 002 App. A)


BACKWARDS = ("identity", "exact", "rule")


def check_backward(defense: Defense, gradient: str) -> None:
    """Refuse a backward this defense cannot give, in one line that says what works."""
    if gradient not in BACKWARDS:
        raise UserError(f"unknown gradient {gradient!r}; accepted: {', '.join(BACKWARDS)}")
    if gradient == "identity":
        return
    purifier = defense if isinstance(defense, Purifier) else None
    purifier = getattr(purifier, "purifier", purifier)
    if purifier is None or purifier.differentiable:
        what = "has a gradient of its own" if purifier is not None else "is a detector (the victim sees x itself)"
        raise UserError(
            f"gradient={gradient!r} vs defense {defense.name!r}: the defense {what}, so attacks get its full gradient; "
            f"{gradient!r} is for the DIP defenses (dip_stitch, dipdefend, dip_inc, deep_protection)"
        )
    if not hasattr(purifier, "purify_pathwise"):
        raise UserError(
            f"gradient={gradient!r} vs defense {defense.name!r}: it has no fit to unroll; what works: "
            "gradient='identity' (BPDA) or a decision-based attack (hopskipjump with threat=adaptive)"
        )


def _check_range(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise UserError(f"a defended classifier takes float images [B, C, H, W] in [0, 1]; got {_describe(images)}")
    if images.numel():
        lo, hi = images.detach().aminmax()
        if lo < 0 or hi > 1:
            raise UserError(f"images must be in [0, 1]; found values in [{lo.item():.4g}, {hi.item():.4g}]")


def _describe(x: object) -> str:
    return f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
