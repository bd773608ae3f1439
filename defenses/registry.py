"""Defenses by name. Later modules add theirs with ``register_defense``."""

import inspect
from collections.abc import Callable
from typing import Any

from common.errors import UserError
from defenses.base import Defense, IdentityDefense

DEFENSES: dict[str, Callable[..., Defense]] = {}


def register_defense(name: str, factory: Callable[..., Defense]) -> None:
    if name in DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    DEFENSES[name] = factory


def build_defense(name: str, **params: Any) -> Defense:
    """Build a registered defense; unknown names and parameters are a :class:`UserError`
    that lists what is accepted."""
    if name not in DEFENSES:
        raise UserError(f"unknown defense {name!r}; accepted: {', '.join(sorted(DEFENSES))}")
    factory = DEFENSES[name]
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"defense {name!r} has no parameter(s) {unknown}; accepted: {accepted or 'none'}")
    return factory(**params)


register_defense("none", IdentityDefense)
