"""Turning ``--attacks fgsm,pgd,cw --eps 2,4,8`` into a list of concrete attack runs."""

from dataclasses import dataclass, field
from typing import Any

from attacks import ATTACKS, build_attack
from attacks.base import Attack
from common.errors import UserError

CLEAN = "clean"


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget (``eps`` in [0, 1] pixel units; None for clean and for
    minimum-norm attacks)."""

    name: str
    eps: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return self.name if self.eps is None else f"{self.name}@{self.eps * 255:.4g}/255"

    def build(self) -> Attack | None:
        return None if self.name == CLEAN else build_attack(self.name, eps=self.eps, **self.params)


def parse_eps(text: str) -> list[float]:
    """``"2,4,8"`` (units of 1/255, as in paper 002) or ``"0.02"`` (pixel units, as paper
    003 writes it: any value below 1 is read as a fraction of the pixel range)."""
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part.removesuffix("/255"))
        except ValueError:
            raise UserError(f"--eps {text!r}: {part!r} is not a number (give eps in /255 units, e.g. 2,4,8)") from None
        eps = value / 255 if value >= 1 or part.endswith("/255") else value
        if not 0 < eps <= 1:
            raise UserError(
                f"--eps {part!r} is out of range: eps must be in (0, 255] /255 units, i.e. (0, 1] of the pixel range"
            )
        values.append(eps)
    if not values:
        raise UserError("--eps is empty; give eps in /255 units, e.g. 2,4,8")
    return values


def expand_attacks(
    names: list[str], eps_values: list[float], params: dict[str, dict[str, Any]] | None = None
) -> list[AttackRun]:
    """One run per (attack, eps) for L-inf attacks, one per minimum-norm attack, and
    ``clean`` as given; unknown names list the accepted ones and every attack is built
    once here so bad parameters fail before anything runs."""
    params = params or {}
    runs: list[AttackRun] = []
    for name in names:
        if name == CLEAN:
            runs.append(AttackRun(CLEAN))
            continue
        if name not in ATTACKS:
            raise UserError(f"unknown attack {name!r}; accepted: {', '.join([CLEAN, *sorted(ATTACKS)])}")
        budgets = eps_values if ATTACKS[name].eps_mode == "required" else [None]
        for eps in budgets:
            run = AttackRun(name, eps, dict(params.get(name, {})))
            try:
                run.build()
            except (ValueError, TypeError) as err:
                raise UserError(f"attack {run.id}: {err}") from None
            runs.append(run)
    if len({r.id for r in runs}) != len(runs):
        raise UserError(f"--attacks lists an attack twice: {[r.id for r in runs]}")
    return runs
