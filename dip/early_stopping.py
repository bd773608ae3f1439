"""Stopping rules that pick one iterate of a DIP fit.

* ``MSEEarlyStop`` -- DIP-INC, Ilyas et al., "The Robust Manifold Defense" (paper 004,
  Sec. 2.4 and 4.4): fit at most ``max_iterations`` (500; 100 for large eps) and stop an
  image as soon as MSE(x(t), x0) < ``threshold`` (0.005 for images in [-1, 1], which is
  0.005 / 4 = 0.00125 in [0, 1], the default here).
* ``OracleTop5Stop`` -- Deep Protection's automatic termination, Ambati & Kulkarni (paper
  001, Sec. 4.1), an analysis mode that needs the true labels: every ``check_every`` (50)
  iterations classify x(t) and stop when the true label is in the top 5 and the
  adversarial label is not. It also records whether the true label was ever top-1, for the
  paper's split of errors into overfit (correct at some point, wrong at the end) and
  underfit (never correct).
"""

import torch
from torch import nn


class _FreezingStop:
    """Per image, the last iterate seen while it was live (``selected``) and how many iterations
    that took; an image is frozen once the rule stops it."""

    selected: torch.Tensor
    iterations: torch.Tensor

    def _keep_live(self, live: torch.Tensor, x: torch.Tensor, t: int) -> None:
        # torch.where, not a boolean index: no host sync while the fit runs.
        self.selected = torch.where(live.view(-1, *[1] * (x.dim() - 1)), x, self.selected)
        self.iterations = torch.where(live, t + 1, self.iterations)

    def result(self) -> torch.Tensor:
        return self.selected


class MSEEarlyStop(_FreezingStop):
    """Observer (observe every iterate). Arguments: threshold: MSE in [0, 1] units. Default: 0.00125."""

    def __init__(self, x0: torch.Tensor, threshold: float = 0.00125) -> None:
        self.threshold = threshold
        self.stopped = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        self.selected = x0.clone()
        self.iterations = torch.zeros(len(x0), dtype=torch.long, device=x0.device)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
        live = ~self.stopped
        self._keep_live(live, x, t)
        self.stopped |= mse < self.threshold
        return self.stopped


class OracleTop5Stop(_FreezingStop):
    """Observer (observe every ``check_every``-th iterate). Arguments: labels (true classes),
    adversarial_labels (the victim's prediction on the input), classifier."""

    def __init__(
        self, x0: torch.Tensor, classifier: nn.Module, labels: torch.Tensor, adversarial_labels: torch.Tensor
    ) -> None:
        self.classifier, self.labels, self.adv = classifier, labels, adversarial_labels
        self.stopped = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        self.ever_correct = torch.zeros_like(self.stopped)
        self.selected = x0.clone()
        self.iterations = torch.zeros(len(x0), dtype=torch.long, device=x0.device)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
        live = ~self.stopped
        logits = self.classifier(x).float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        true_in, adv_in = (top5 == self.labels[:, None]).any(1), (top5 == self.adv[:, None]).any(1)
        self.ever_correct |= live & (logits.argmax(1) == self.labels)
        self._keep_live(live, x, t)
        self.stopped |= true_in & ~adv_in
        return self.stopped

    def error_types(self, final_correct: torch.Tensor) -> list[str]:
        """Per image: "correct", or for a wrong final answer "overfit" (the true label was
        top-1 at some checked iterate) or "underfit" (never)."""
        out = []
        for ok, ever in zip(final_correct.tolist(), self.ever_correct.tolist(), strict=True):
            out.append("correct" if ok else "overfit" if ever else "underfit")
        return out
