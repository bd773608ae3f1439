"""DIP stitching: Ding et al., "Delving into Deep Image Prior for Adversarial Defense"
(ACM MM 2021, paper 002), Algorithm 1 and Eq. 3-7, as a streaming rule over a DIP trace.

Per image, on the sampled iterates x(t) of its DIP trace:
  cross-boundary (Eq. 3, Alg. 1 l. 9-12): t is kept when y(t) != y(t+1), SSIM(x(t), x0) >= tau
      and t >= t0, where y(t) = argmax f(x(t)) and t+1 is the next sampled iterate;
  on-boundary (Eq. 4-5): x_db = a x(t) + (1 - a) x(t+1), a on a grid of N+1 points in [0, 1]
      minimising |f_y(t)(x_db) - f_y(t+1)(x_db)| (softmax), all grid points in one batch;
  on-manifold (Eq. 6): x_man = x_db + beta (x_db - x0) for the last K cross-boundary t;
  stitching (Eq. 7): x_rec = mean of the x_man. No crossing: the mean of the last K
      iterates x(T-K) ... x(T-1), beta = 0.
Only the previous sampled iterate, the last K crossing pairs and the last K iterates are
kept, so memory does not grow with T.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from dipdefense.common.ssim import per_image_ssim


@dataclass
class StitchSettings:
    """Arguments (defaults: paper 002, Sec. 4.1):
    tau: SSIM threshold for cross-boundary iterates. Default: 0.7.
    t0: warm-up, in DIP iterations (the paper does not say whether t counts iterations or
        the 200 sampled images). Default: 50.
    k: cross-boundary images kept (the last K). Default: 15.
    beta: on-manifold step size. Default: 0.5.
    grid: N, sections of the alpha grid. Default: 100.
    search: "grid" (Eq. 5: all N+1 interpolations through the victim) or "bisection" on
        p_y(t) - p_y(t+1) (ceil(log2 N) + 1 victim calls per crossing instead of N+1, for
        large victims; it finds a root of the gap, which is the grid's alpha to within 1/N
        when the gap crosses zero once). Default: "grid".
    """

    tau: float = 0.7
    t0: int = 50
    k: int = 15
    beta: float = 0.5
    grid: int = 100
    search: str = "grid"

    def __post_init__(self) -> None:
        if self.search not in ("grid", "bisection"):
            raise ValueError(f"unknown search {self.search!r}; accepted: grid, bisection")


# Iterations at which the victim's label on x(t) is kept per image (issue 12's steadiness figure:
# how often the victim is still right on the blurry early iterates of a clean image).
STEADINESS_ITERATIONS = (50, 100, 200)


def _mix(x_a: torch.Tensor, x_b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 4: alpha x(t) + (1 - alpha) x(t+1), one alpha per image."""
    a = alpha.view(-1, *[1] * (x_a.dim() - 1))
    return a * x_a + (1 - a) * x_b


class StitchRule:
    """Observer for ``dip.fit_dip`` that implements Algorithm 1 on the fly for B images.

    While the fit runs it only keeps, per image, the last K crossing pairs (x(t), x(t+1)) in a
    ring buffer updated with tensor ops, so observing issues no host sync (a GPU loop never
    waits on it). The on-boundary search (Eq. 4-5) runs once, in ``result()``, on the kept
    pairs of all images together: fewer, larger victim batches, and no search for crossings
    that later fall out of the last K. The victim is applied per image, so the result equals
    searching at each crossing."""

    def __init__(self, clean_input: torch.Tensor, classifier: nn.Module, settings: StitchSettings) -> None:
        self.x0 = clean_input  # the image being defended (adversarial or not)
        self.classifier, self.s = classifier, settings
        b, device = len(clean_input), clean_input.device
        self.prev: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # t, x, label, ssim
        # Ring buffers of the last K crossing pairs and their labels; slot crossings % K is next.
        self.pairs = clean_input.new_zeros(b, settings.k, 2, *clean_input.shape[1:])
        self.pair_labels = torch.zeros(b, settings.k, 2, dtype=torch.long, device=device)
        self.pair_times = torch.zeros(b, settings.k, 2, dtype=torch.long, device=device)  # t, t+1 (selection())
        self.tail: list[torch.Tensor] = []
        self.tail_times: list[int] = []
        self.crossings = torch.zeros(b, dtype=torch.long, device=device)
        self._boundary: list[torch.Tensor | None] | None = None  # per image, its on-boundary images (result())
        self._alphas: list[torch.Tensor | None] | None = None  # per image, the alpha of each (Eq. 5)
        # Diagnostics (off unless asked for; they sync): victim confidences per sampled t, crossing t's.
        self.trace: list[tuple[int, torch.Tensor]] | None = None
        self.crossing_times: list[list[int]] = [[] for _ in range(b)]
        self.labels_at: dict[int, torch.Tensor] = {}  # the victim's label on x(t), t in STEADINESS_ITERATIONS

    def record_trace(self) -> "StitchRule":
        self.trace = []
        return self

    @property
    def kept(self) -> torch.Tensor:
        """Crossing pairs kept per image (at most K)."""
        return self.crossings.clamp(max=self.s.k)

    @torch.no_grad()
    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).float().softmax(1)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> None:
        self.tail = [*self.tail[-(self.s.k - 1) :], x] if self.s.k > 1 else [x]
        self.tail_times = [*self.tail_times[-(self.s.k - 1) :], t] if self.s.k > 1 else [t]
        probs = self._probs(x)
        label, ssim = probs.argmax(1), per_image_ssim(x, self.x0)
        if t in STEADINESS_ITERATIONS:
            self.labels_at[t] = label
        if self.trace is not None:
            self.trace.append((t, probs.cpu()))
        if self.prev is not None:
            t_prev, x_prev, label_prev, ssim_prev = self.prev
            crossed = (label != label_prev) & (ssim_prev >= self.s.tau) & (t_prev >= self.s.t0)
            slot = (self.crossings % self.s.k).view(-1, 1)
            self._write(self.pairs, slot, torch.stack((x_prev, x), 1), crossed)
            self._write(self.pair_labels, slot, torch.stack((label_prev, label), 1), crossed)
            times = torch.stack((torch.full_like(label, t_prev), torch.full_like(label, t)), 1)  # no host copy
            self._write(self.pair_times, slot, times, crossed)
            self.crossings += crossed
            if self.trace is not None:
                for i in crossed.nonzero().flatten().tolist():
                    self.crossing_times[i].append(t_prev)
        self.prev = (t, x, label, ssim)

    @staticmethod
    def _write(ring: torch.Tensor, slot: torch.Tensor, new: torch.Tensor, where: torch.Tensor) -> None:
        """ring[i, slot[i]] = new[i] for the images where ``where`` holds, without a host sync."""
        index = slot.view(-1, 1, *[1] * (ring.dim() - 2)).expand(-1, 1, *ring.shape[2:])
        mask = where.view(-1, 1, *[1] * (ring.dim() - 2))
        ring.scatter_(1, index, torch.where(mask, new.unsqueeze(1), ring.gather(1, index)))

    def _kept_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image's kept pairs, oldest first, images one after another: x_a, x_b [P, ...],
        labels [P, 2], their times [P, 2]; and the count per image."""
        k, kept = self.s.k, self.kept
        positions = torch.arange(k, device=kept.device)
        order = ((self.crossings - kept).view(-1, 1) + positions) % k  # chronological slots
        valid = positions.view(1, -1) < kept.view(-1, 1)
        pairs = self.pairs.gather(1, order.view(*order.shape, *[1] * (self.pairs.dim() - 2)).expand_as(self.pairs))
        labels = self.pair_labels.gather(1, order.view(*order.shape, 1).expand_as(self.pair_labels))
        times = self.pair_times.gather(1, order.view(*order.shape, 1).expand_as(self.pair_times))
        return pairs[valid], labels[valid], times[valid], kept

    def _on_boundary_all(self) -> list[torch.Tensor | None]:
        """Eq. 4-5 for every kept pair, in batches of B pairs; per image, its x_db [n, ...] or None."""
        if self._boundary is None:
            pairs, labels, _, kept = self._kept_pairs()
            found = [
                self._on_boundary(
                    pairs[i : i + len(self.x0), 0], pairs[i : i + len(self.x0), 1], *labels[i : i + len(self.x0)].T
                )
                for i in range(0, len(pairs), len(self.x0))
            ]
            x_db = torch.cat([f[0] for f in found]) if found else pairs[:, 0]
            alphas = torch.cat([f[1] for f in found]) if found else pairs.new_zeros(0)
            self._boundary = [part if len(part) else None for part in x_db.split(kept.tolist())]
            self._alphas = [part if len(part) else None for part in alphas.split(kept.tolist())]
        return self._boundary

    def _on_boundary(
        self, x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_db and its alpha (Eq. 4-5) for each pair."""
        if self.s.search == "bisection":
            return self._bisect(x_a, x_b, y_a, y_b)
        return self._grid(x_a, x_b, y_a, y_b)

    def _gap(self, x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        probs = self._probs(x)
        return probs.gather(1, y_a[:, None]).squeeze(1) - probs.gather(1, y_b[:, None]).squeeze(1)

    def _bisect(
        self, x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5 by bisection: the gap is > 0 at alpha = 1 (x_a) and < 0 at alpha = 0 (x_b)."""
        lo = torch.zeros(len(x_a), device=x_a.device)
        hi = torch.ones_like(lo)
        for _ in range(math.ceil(math.log2(self.s.grid)) + 1):
            mid = (lo + hi) / 2
            positive = self._gap(_mix(x_a, x_b, mid), y_a, y_b) > 0
            hi, lo = torch.where(positive, mid, hi), torch.where(positive, lo, mid)
        return _mix(x_a, x_b, (lo + hi) / 2), (lo + hi) / 2

    def _grid(
        self, x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4-5: grid search of alpha, the N+1 interpolations of all crossings in one batch."""
        n, alphas = len(x_a), torch.linspace(0, 1, self.s.grid + 1, device=x_a.device)
        mix = alphas.view(1, -1, 1, 1, 1) * x_a[:, None] + (1 - alphas.view(1, -1, 1, 1, 1)) * x_b[:, None]
        probs = self._probs(mix.flatten(0, 1)).view(n, len(alphas), -1)
        gap = (
            probs.gather(2, y_a.view(n, 1, 1).expand(n, len(alphas), 1))
            - probs.gather(2, y_b.view(n, 1, 1).expand(n, len(alphas), 1))
        ).abs()
        best = gap.squeeze(2).argmin(1)
        return mix[torch.arange(n), best], alphas[best]

    def diagnostics(self, i: int) -> dict:
        """Image i's decision trace (sampled t, softmax per t), crossing t's and last on-boundary image."""
        if self.trace is None:
            raise RuntimeError("call record_trace() before fitting to keep the decision trace")
        return {
            "t": [t for t, _ in self.trace],
            "probs": torch.stack([p[i] for _, p in self.trace]),
            "crossings": list(self.crossing_times[i]),
            "on_boundary": None if (x_db := self._on_boundary_all()[i]) is None else x_db[-1].cpu(),
        }

    def result(self) -> torch.Tensor:
        """Eq. 6-7, or the no-crossing fallback."""
        fallback = torch.stack(self.tail).mean(0)
        out = []
        for i, x_db in enumerate(self._on_boundary_all()):
            if x_db is not None:
                out.append((x_db + self.s.beta * (x_db - self.x0[i])).mean(0))
            else:
                out.append(fallback[i])
        return torch.stack(out).clamp(0, 1)
