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
* ``StaticErrorSplit`` -- the same split for paper 001's static mode (a fixed iteration):
  it watches the fit and stops nothing.
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


def overfit_underfit(final_correct: torch.Tensor, ever_correct: torch.Tensor) -> list[str]:
    """Paper 001's split of errors (Sec. 4.2, Fig. 5), per image: "correct", or for a wrong final
    answer "overfit" (the true label was top-1 at some checked iterate) or "underfit" (never)."""
    out = []
    for ok, ever in zip(final_correct.tolist(), ever_correct.tolist(), strict=True):
        out.append("correct" if ok else "overfit" if ever else "underfit")
    return out


class OracleTop5Stop(_FreezingStop):
    """Observer (observe every ``check_every``-th iterate). Arguments: labels (true classes),
    adversarial_labels (the victim's prediction on the input), classifier, k: the top-k the
    true label must enter and the adversarial label leave. Default: 5 (paper 001, ImageNet;
    on 10 classes top-5 is half of them, so k = 1 is the stricter reading). first_check: the
    first iterate it judges; earlier ones (the untrained network's output at t = 0) neither
    stop an image nor count as right. Default: 0 (deep_protection passes check_every: the
    paper checks "every 50 iterations")."""

    def __init__(
        self,
        x0: torch.Tensor,
        classifier: nn.Module,
        labels: torch.Tensor,
        adversarial_labels: torch.Tensor,
        k: int = 5,
        first_check: int = 0,
    ) -> None:
        self.classifier, self.labels, self.adv, self.k = classifier, labels, adversarial_labels, k
        self.first_check = first_check
        self.stopped = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        self.ever_correct = torch.zeros_like(self.stopped)
        self.selected = x0.clone()
        self.iterations = torch.zeros(len(x0), dtype=torch.long, device=x0.device)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
        live = ~self.stopped
        if t < self.first_check:
            self._keep_live(live, x, t)
            return self.stopped
        logits = self.classifier(x).float()
        top = logits.topk(min(self.k, logits.shape[1]), dim=1).indices
        true_in, adv_in = (top == self.labels[:, None]).any(1), (top == self.adv[:, None]).any(1)
        self.ever_correct |= live & (logits.argmax(1) == self.labels)
        self._keep_live(live, x, t)
        self.stopped |= true_in & ~adv_in
        return self.stopped

    def error_types(self, final_correct: torch.Tensor) -> list[str]:
        return overfit_underfit(final_correct, self.ever_correct)


class StaticErrorSplit:
    """Observer for a fit stopped at a fixed iteration (paper 001's static mode) that stops
    nothing and changes nothing: it classifies every observed iterate to record whether the
    true label was ever top-1, for the overfit/underfit split of the wrong final answers
    (Sec. 4.2, Fig. 5). The result is the last iterate. Arguments: labels, classifier,
    first_check (as ``OracleTop5Stop``'s). Default: 0."""

    def __init__(self, x0: torch.Tensor, classifier: nn.Module, labels: torch.Tensor, first_check: int = 0) -> None:
        self.classifier, self.labels, self.last, self.first_check = classifier, labels, x0, first_check
        self.ever_correct = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> None:
        if t >= self.first_check:
            self.ever_correct |= self.classifier(x).argmax(1) == self.labels
        self.last = x

    def result(self) -> torch.Tensor:
        return self.last

    def error_types(self, final_correct: torch.Tensor) -> list[str]:
        return overfit_underfit(final_correct, self.ever_correct)
