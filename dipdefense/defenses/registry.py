"""Defenses by name. Later modules add theirs with ``register_defense``."""

import inspect
from collections.abc import Callable
from typing import Any

from dipdefense.common.errors import UserError
from dipdefense.common.parameters import check_parameter
from dipdefense.defenses.base import Defense, IdentityDefense

DEFENSES: dict[str, Callable[..., Defense]] = {}
# Integer parameters where 0 is meaningful (a seed; paper 002's t0, the first iteration a crossing counts at).
_MAY_BE_ZERO = {"seed", "t0"}


def register_defense(name: str, factory: Callable[..., Defense]) -> None:
    if name in DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    DEFENSES[name] = factory


def build_defense(name: str, **params: Any) -> Defense:
    """Build a registered defense; unknown names and parameters are a :class:`UserError`
    that lists what is accepted. ``DETECTOR+PURIFIER`` builds the detector-gated pipeline;
    its ``params`` are keyed by the two names.

    ``preset=NAME`` starts from one of the defense's named parameter sets (its class's
    ``presets``, e.g. dip_stitch's ``paper_literal``); parameters given beside it win. A run
    records the parameters, not the preset's name, so a preset equal to an older default
    resumes runs recorded under that default."""
    if "+" in name:
        return _build_gated(name, params)
    if name not in DEFENSES:
        raise UserError(f"unknown defense {name!r}; accepted: {', '.join(sorted(DEFENSES))}")
    factory = DEFENSES[name]
    if "preset" in params:
        presets: dict[str, dict[str, Any]] = getattr(factory, "presets", {})
        preset = params.pop("preset")
        if not isinstance(preset, str) or preset not in presets:
            raise UserError(
                f"defense {name!r} has no preset {preset!r}; accepted: {', '.join(sorted(presets)) or 'none'}"
            )
        params = {**presets[preset], **params}
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"defense {name!r} has no parameter(s) {unknown}; accepted: {accepted or 'none'}")
    signature = inspect.signature(factory).parameters
    for key, value in params.items():
        check_parameter(f"defense {name}", key, value, signature[key].annotation, _MAY_BE_ZERO)
    return factory(**params)


def _build_gated(name: str, params: dict[str, Any]) -> Defense:
    from dipdefense.defenses.base import Detector, Purifier
    from dipdefense.defenses.gated import DetectorGatedPurifier

    parts = name.split("+")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"defense {name!r}: a gated defense is DETECTOR+PURIFIER, e.g. glow_gate+dip_stitch")
    unknown = sorted(set(params) - set(parts))
    if unknown:
        raise UserError(f"defense {name!r}: parameters are keyed by {parts[0]!r} and {parts[1]!r}, got {unknown}")
    detector, purifier = (build_defense(part, **params.get(part, {})) for part in parts)
    if not isinstance(detector, Detector):
        detectors = sorted(n for n, f in DEFENSES.items() if isinstance(f, type) and issubclass(f, Detector))
        raise UserError(
            f"defense {name!r}: {parts[0]!r} is not a detector; detectors: {', '.join(detectors) or 'none'}"
        )
    if not isinstance(purifier, Purifier):
        raise UserError(f"defense {name!r}: {parts[1]!r} is not a purifier")
    return DetectorGatedPurifier(detector, purifier)


register_defense("none", IdentityDefense)
