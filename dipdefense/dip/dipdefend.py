"""DIPDefend's stopping rule: Dai et al., "DIPDefend: Deep Image Prior Driven Defense against
Adversarial Examples" (ACM MM 2020), the training-free baseline of paper 002's Tables 1-2.

The fitting curve c_t = PSNR(x(t), x0) (for images larger than ``patch``, the minimum
over patch x patch tiles) is smoothed by Holt's double exponential smoothing with level
s and trend d:
    s_1 = c_0,  d_1 = c_1 - c_0,
    s_t = lam c_t + (1 - lam)(s_{t-1} + d_{t-1}),   d_t = lam (s_t - s_{t-1}) + (1 - lam) d_{t-1}.
The output is the last iterate at which s_t set a new maximum: once the smoothed curve
stops rising, the fit has begun to reproduce the adversarial noise.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DIPDefendSettings:
    """Arguments: lam: smoothing factor. Default: 0.002. patch: tile side for the
    minimum-PSNR curve on large images. Default: 32."""

    lam: float = 0.002
    patch: int = 32


def psnr_curve_value(x: torch.Tensor, x0: torch.Tensor, patch: int = 32) -> torch.Tensor:
    """PSNR(x, x0) per image (data range 1), the minimum over tiles for images above ``patch``."""
    err = (x - x0).pow(2)
    if x.shape[-1] > patch and x.shape[-2] > patch:
        mse = F.avg_pool2d(err.mean(1, keepdim=True), patch, patch).flatten(1).amax(1)
    else:
        mse = err.flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


class DIPDefendRule:
    """Observer for ``dip.fit_dip`` (observe every iterate); ``result()`` is the selection."""

    def __init__(self, x0: torch.Tensor, settings: DIPDefendSettings) -> None:
        self.x0, self.s = x0, settings
        self.count = 0
        self.c0: torch.Tensor | None = None
        self.level = self.trend = self.best_level = None
        self.best = x0.clone()
        self.best_t = torch.zeros(len(x0), dtype=torch.long, device=x0.device)

    @torch.no_grad()
    def __call__(self, t: int, x: torch.Tensor, mse: torch.Tensor) -> None:
        c = psnr_curve_value(x, self.x0, self.s.patch)
        lam = self.s.lam
        if self.count == 0:
            self.c0 = c
            self.best, self.best_t[:] = x.clone(), t
        elif self.count == 1:
            self.level, self.trend = self.c0, c - self.c0
            self.best_level = self.level.clone()
            self.best, self.best_t[:] = x.clone(), t
        else:
            previous = self.level
            self.level = lam * c + (1 - lam) * (self.level + self.trend)
            self.trend = lam * (self.level - previous) + (1 - lam) * self.trend
            # Selections by torch.where rather than a branch on rising.any(): the rule sees every
            # iterate, and a host sync there would stall a GPU fit at every step.
            rising = self.level > self.best_level
            self.best_level = torch.where(rising, self.level, self.best_level)
            self.best = torch.where(rising.view(-1, *[1] * (x.dim() - 1)), x, self.best)
            self.best_t = torch.where(rising, t, self.best_t)
        self.count += 1

    def result(self) -> torch.Tensor:
        return self.best
