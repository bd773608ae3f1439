"""The defense interface every defense implements.

A *purifier* maps a batch of (possibly adversarial) images to reconstructions that the
victim then classifies: ``x_rec = D(x_adv)``. A *detector* returns one score per image,
higher meaning "more likely adversarial", and flags images whose score reaches its
``threshold``. Both receive the victim (DIP rules read its decisions) and the images'
dataset indices (per-image seeds make a result independent of batch and shard).
"""

from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn


class Purified(NamedTuple):
    """What a purifier hands back: the reconstructions, one dict of extra per-image fields for
    the evaluation's records (iterations used, INC's inversion distance and refusal, a gate's
    score, ...), and the decision traces of the images asked for (``trace_indices``), by
    dataset index."""

    images: torch.Tensor
    details: list[dict[str, Any]]
    traces: dict[int, dict[str, Any]]


class Defense:
    """Base class. ``params()`` lists every setting that changes the result (for run
    manifests); ``kind`` is "purifier" or "detector"."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    # evaluate.py's sample size when --num-samples is not given.
    default_num_samples: ClassVar[int] = 1000

    def params(self) -> dict[str, Any]:
        return {}

    def check_images(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError when the defense cannot take images of this (C, H, W) shape, so an
        evaluation stops before it starts (e.g. a DIP network too deep for 32x32 images)."""

    def device_notes(self, device_type: str) -> list[str]:
        """Lines for the run's log (and run.json) on what an option does or does not do on
        this device ("cpu" or "cuda"); none by default."""
        return []

    def to(self, device: torch.device | str) -> "Defense":
        return self


class Purifier(Defense):
    """``uses_labels``: an analysis mode (an oracle) that is given the true labels.
    A subclass implements ``purify`` or, when it has per-image details to report,
    ``purify_detailed``; each is defined by the other."""

    kind = "purifier"
    uses_labels: bool = False
    # ``differentiable``: ``purify_with_grad`` is the defense's own gradient (attacks get full
    # gradients); otherwise an adaptive gradient attack needs BPDA. ``seeded``: the output
    # depends on the dataset indices (per-image seeds), so a query needs one.
    differentiable: bool = False
    seeded: bool = False

    def purify(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return reconstructions in [0, 1] with the shape of ``images``."""
        if type(self).purify_detailed is Purifier.purify_detailed:
            raise NotImplementedError(f"{type(self).__name__} implements neither purify nor purify_detailed")
        return self.purify_detailed(images, classifier, indices, labels).images

    def purify_detailed(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> Purified:
        """``purify`` with its per-image details and decision traces (none by default)."""
        return Purified(self.purify(images, classifier, indices, labels), [{} for _ in images], {})

    def purify_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        """``purify`` with the autograd graph kept (only where ``differentiable``)."""
        raise NotImplementedError(f"{self.name} has no gradient of its own")


class Detector(Defense):
    """``logit``: the differentiable score before the sigmoid (adaptive attacks push it down);
    ``score`` = sigmoid(logit) without a graph."""

    kind = "detector"
    threshold: float = 0.5

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Return one score per image, shape [B]."""
        raise NotImplementedError

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        """Return one differentiable logit per image, shape [B]."""
        raise NotImplementedError


class IdentityDefense(Purifier):
    """``none``: no defense; the victim sees the input as it is."""

    name = "none"
    differentiable = True

    def purify_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def purify(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return images
