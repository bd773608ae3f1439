"""Turning ``--attacks fgsm,pgd,cw --eps 2,4,8`` into a list of concrete attack runs."""

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from dipdefense.attacks import ATTACKS, build_attack
from dipdefense.attacks.base import Attack
from dipdefense.common.errors import UserError

CLEAN = "clean"
# Who the attack is crafted on (Carlini et al. 2019, "On Evaluating Adversarial Robustness"): the bare victim, the defense unknown
# to the attacker (paper 002's "white-box" Table 1), or the defended model, victim(defense(x)).
OBLIVIOUS, ADAPTIVE = "oblivious", "adaptive"
THREAT_MODELS = (OBLIVIOUS, ADAPTIVE)


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget (``eps`` in [0, 1] pixel units; None for clean and for
    minimum-norm attacks) under one threat model ("oblivious" or "adaptive")."""

    name: str
    eps: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    inline: str = ""  # parameters written in the attack list, part of the id
    threat: str = OBLIVIOUS

    @property
    def id(self) -> str:
        base = f"{self.name}({self.inline})" if self.inline else self.name
        return base if self.eps is None else f"{base}@{self.eps * 255:.4g}/255"

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


def split_attack_list(text: str) -> list[tuple[str, dict[str, Any], str]]:
    """``"clean,pgd(steps=50),hopskipjump(queries=200)"`` -> [(name, inline params, inline text)].
    Commas inside parentheses separate parameters, not attacks."""
    items, depth, current = [], 0, ""
    for ch in text + ",":
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            if current.strip():
                items.append(current.strip())
            current = ""
        else:
            current += ch
    if depth != 0:
        raise UserError(f"--attacks {text!r}: unbalanced parentheses")
    return [parse_call(item, "--attacks") for item in items]


def parse_call(item: str, option: str) -> tuple[str, dict[str, Any], str]:
    """``"pgd(steps=50,alpha=0.01)"`` -> ("pgd", {"steps": 50, "alpha": 0.01}, "steps=50,alpha=0.01");
    values are read as YAML scalars (``true``, ``null``, numbers)."""
    match = re.fullmatch(r"\s*([A-Za-z_0-9]+)\s*(?:\((.*)\))?\s*", item)
    if not match:
        raise UserError(f"{option}: cannot read {item!r}; write NAME or NAME(key=value,...)")
    inline_text, inline = match.group(2) or "", {}
    for pair in filter(None, (p.strip() for p in inline_text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"{option}: {item!r}: {pair!r} is not key=value")
        try:
            inline[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            raise UserError(f"{option}: {item!r}: cannot read the value of {key.strip()!r}") from None
    return match.group(1), inline, inline_text.replace(" ", "")


def _threat_of(name: str, inline: dict[str, Any], inline_text: str, default: str) -> tuple[str, str]:
    """The run's threat model and its inline text, normalised: ``threat=`` is dropped from the
    text and ``threat=adaptive`` written back for attacks that also have an oblivious form, so
    the two forms of one attack never share an id. Attacks built for defended models
    (``bpda_pgd``, ``eot_pgd``, ``random_noise``) are adaptive and carry no marker."""
    threat = inline.pop("threat", default)
    if threat not in THREAT_MODELS:
        raise UserError(f"attack {name}: threat={threat!r}; accepted: {', '.join(THREAT_MODELS)}")
    if ATTACKS[name].adaptive_only:
        if threat == OBLIVIOUS and "threat" in inline_text:
            raise UserError(f"attack {name} runs through the defense by design; it has no oblivious form")
        threat = ADAPTIVE
    parts = [p for p in inline_text.split(",") if p and not p.startswith("threat=")]
    if threat == ADAPTIVE and not ATTACKS[name].adaptive_only:
        parts.append("threat=adaptive")
    return threat, ",".join(parts)


def expand_attacks(
    attack_list: str | list[str],
    eps_values: list[float],
    params: dict[str, dict[str, Any]] | None = None,
    threat_model: str = OBLIVIOUS,
) -> list[AttackRun]:
    """One run per (attack, eps) for L-inf attacks, one per minimum-norm attack, and
    ``clean`` as given. Parameters come from ``params[name]`` (the config's
    ``attack_params``), overridden by those written inline (``pgd(steps=50)``). Unknown
    names list the accepted ones, and every attack is built once here so that bad
    parameters fail before anything runs. ``threat_model`` is the default threat of attacks
    that have both forms; ``NAME(threat=adaptive)`` sets it for one attack."""
    if threat_model not in THREAT_MODELS:
        raise UserError(f"--threat-model {threat_model!r}; accepted: {', '.join(THREAT_MODELS)}")
    params = params or {}
    text = attack_list if isinstance(attack_list, str) else ",".join(attack_list)
    runs: list[AttackRun] = []
    for name, inline, inline_text in split_attack_list(text):
        if name == CLEAN:
            runs.append(AttackRun(CLEAN))
            continue
        if name not in ATTACKS:
            raise UserError(f"unknown attack {name!r}; accepted: {', '.join([CLEAN, *sorted(ATTACKS)])}")
        threat, inline_text = _threat_of(name, inline, inline_text, threat_model)
        budgets = eps_values if ATTACKS[name].eps_mode == "required" else [None]
        for eps in budgets:
            run = AttackRun(name, eps, {**params.get(name, {}), **inline}, inline_text, threat)
            try:
                run.build()
            except (ValueError, TypeError) as err:
                raise UserError(f"attack {run.id}: {err}") from None
            runs.append(run)
    if len({r.id for r in runs}) != len(runs):
        raise UserError(f"--attacks lists an attack twice: {[r.id for r in runs]}")
    return runs


def check_against_defense(runs: list[AttackRun], defense: Any) -> None:
    """Refuse, before anything runs, an adaptive attack that cannot face this defense: one that
    backpropagates through a defense without a gradient of its own (BPDA is what works there),
    or any adaptive attack on an oracle analysis mode (it is given the true labels)."""
    for run in runs:
        if run.threat != ADAPTIVE:
            continue
        if getattr(defense, "uses_labels", False):
            raise UserError(
                f"attack {run.id} vs defense {defense.name!r}: the defense is an oracle analysis (it is given the "
                "true labels) and cannot be attacked adaptively; turn its oracle off or use oblivious attacks"
            )
        purifier = getattr(defense, "purifier", defense)
        differentiable = getattr(purifier, "differentiable", True) or getattr(defense, "kind", "") == "detector"
        attack = ATTACKS[run.name]
        if attack.needs_projection and not hasattr(purifier, "project"):
            raise UserError(
                f"attack {run.id} vs defense {defense.name!r}: {run.name} searches a generator's latent space and "
                "needs a defense that projects onto one (inc); what works here: bpda_pgd, eot_pgd, random_noise"
            )
        backward = getattr(run.build(), "backward", "identity")
        if backward in ("exact", "rule"):  # a DIP fit to unroll, or its rule's algebra
            from dipdefense.defenses.defended import check_backward

            try:
                check_backward(defense, backward)
            except UserError as err:
                raise UserError(f"attack {run.id}: {err}") from None
        if attack.needs_gradient and not attack.uses_bpda and not differentiable:
            raise UserError(
                f"attack {run.id} vs defense {defense.name!r}: {run.name} backpropagates through the defense, which "
                "has no gradient of its own; what works: bpda_pgd or eot_pgd (BPDA, identity backward), "
                "hopskipjump(threat=adaptive) or square(threat=adaptive) (no gradient needed), random_noise"
            )
