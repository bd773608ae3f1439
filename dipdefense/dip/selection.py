"""What a DIP defense's output is, once its discrete choices are made: a weighted sum of the
fit's iterates and of the input, y = clamp(sum_t w_t x(t) + c x0, 0, 1), per image.

Every selection rule here is linear in the iterates given its choices (which crossings, which
alpha, which stopping iterate), so this is all the pathwise gradient (``dip.pathwise``) and the
rule-aware BPDA need to know of a rule. The choices are held fixed: they are piecewise constant
in x0, so their own derivative is zero almost everywhere.
"""

from dataclasses import dataclass

import torch

from dipdefense.dip.dipdefend import DIPDefendRule
from dipdefense.dip.early_stopping import MSEEarlyStop
from dipdefense.dip.stitching import StitchRule


@dataclass
class LinearSelection:
    """Per image, {t: w_t} and c: y = clamp(sum_t w_t x(t) + c x0, 0, 1)."""

    weights: list[dict[int, float]]
    x0_weight: list[float]

    @property
    def last(self) -> int:
        """The last iterate any image's output reads (the fit need not be unrolled further)."""
        return max(t for w in self.weights for t in w)

    def times(self) -> set[int]:
        return {t for w in self.weights for t in w}

    def weight_at(self, t: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """w_t per image [B] (0 where an image does not read x(t))."""
        return torch.tensor([w.get(t, 0.0) for w in self.weights], device=device, dtype=dtype)

    def total_weight(self) -> list[float]:
        """sum_t w_t + c per image: 1 for a rule whose output moves with x0 as the iterates do."""
        return [sum(w.values()) + c for w, c in zip(self.weights, self.x0_weight, strict=True)]


def stitch_selection(rule: StitchRule) -> LinearSelection:
    """Paper 002, Eq. 4, 6, 7 with the crossing set and each alpha fixed: with n kept pairs
    (t_j, t_j'), x_rec = (1/n) sum_j [(1 + beta)(a_j x(t_j) + (1 - a_j) x(t_j')) - beta x0];
    with none, the mean of the last K iterates (beta = 0)."""
    boundary = rule._on_boundary_all()
    _, _, times, kept = rule._kept_pairs()
    beta, weights, x0_weight, first = rule.s.beta, [], [], 0
    for i, n in enumerate(kept.tolist()):
        w: dict[int, float] = {}
        if boundary[i] is None:
            for t in rule.tail_times:
                w[t] = w.get(t, 0.0) + 1 / len(rule.tail_times)
            x0_weight.append(0.0)
        else:
            for j in range(n):
                a, (t_a, t_b) = float(rule._alphas[i][j]), times[first + j].tolist()
                w[t_a] = w.get(t_a, 0.0) + (1 + beta) * a / n
                w[t_b] = w.get(t_b, 0.0) + (1 + beta) * (1 - a) / n
            x0_weight.append(-beta)
        weights.append(w)
        first += n
    return LinearSelection(weights, x0_weight)


def rule_selection(rule: object, batch: int, last_iterate: int) -> LinearSelection:
    """The selection of any of the project's rules; ``rule`` None is the last iterate x(T-1)."""
    if rule is None:
        return LinearSelection([{last_iterate: 1.0} for _ in range(batch)], [0.0] * batch)
    if isinstance(rule, StitchRule):
        return stitch_selection(rule)
    if isinstance(rule, DIPDefendRule):  # the iterate at which the smoothed PSNR last rose
        return LinearSelection([{int(t): 1.0} for t in rule.best_t.tolist()], [0.0] * batch)
    if isinstance(rule, MSEEarlyStop):  # the last iterate seen while the image was live
        return LinearSelection([{int(n) - 1: 1.0} for n in rule.iterations.tolist()], [0.0] * batch)
    raise TypeError(f"no linear selection is known for the rule {type(rule).__name__}")
