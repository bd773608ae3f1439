"""Detector-gated purification, ``DETECTOR+PURIFIER`` (e.g. ``glow_gate+dip_stitch``): the
pipeline paper 001 proposes as future work. Only the inputs the detector flags are purified;
the rest go to the victim untouched, so clean accuracy stays near the undefended victim's
while the purifier's cost is paid only for the flagged share."""

from typing import Any

import torch
from torch import nn

from dipdefense.defenses.base import Detector, Purified, Purifier


class DetectorGatedPurifier(Purifier):
    """Arguments: detector (a :class:`Detector`; its ``threshold`` decides), purifier (a
    :class:`Purifier`). Records get ``score``, ``flagged`` and the purifier's details."""

    kind = "purifier"

    def __init__(self, detector: Detector, purifier: Purifier) -> None:
        self.detector, self.purifier = detector, purifier
        self.name = f"{detector.name}+{purifier.name}"
        self.uses_labels = purifier.uses_labels
        self.default_num_samples = purifier.default_num_samples
        self.differentiable, self.seeded = purifier.differentiable, purifier.seeded

    def params(self) -> dict[str, Any]:
        return {"detector": self.detector.params(), "purifier": self.purifier.params()}

    def check_images(self, shape: tuple[int, ...]) -> None:
        self.detector.check_images(shape)
        self.purifier.check_images(shape)

    def device_notes(self, device_type: str) -> list[str]:
        return self.detector.device_notes(device_type) + self.purifier.device_notes(device_type)

    def to(self, device: torch.device | str) -> "DetectorGatedPurifier":
        self.detector, self.purifier = self.detector.to(device), self.purifier.to(device)
        return self

    def purify_detailed(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> Purified:
        with torch.no_grad():
            scores = self.detector.score(images).float()
        flagged = scores >= self.detector.threshold
        out = images.clone()
        details: list[dict[str, Any]] = [
            {"score": float(s), "flagged": bool(f)} for s, f in zip(scores, flagged, strict=True)
        ]
        rows = flagged.nonzero().flatten()
        traces: dict[int, dict[str, Any]] = {}
        if len(rows):
            given = None if labels is None else labels[rows]
            purified = self.purifier.purify_detailed(images[rows], classifier, indices[rows], given)
            out[rows] = purified.images
            for j, i in enumerate(rows.tolist()):
                details[i].update(purified.details[j])
            traces = purified.traces
        return Purified(out, details, traces)
