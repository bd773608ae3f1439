"""Checking a keyword parameter against its annotation, for the name registries (attacks,
defenses): a value of the wrong type or sign is one clear error instead of a run that
silently does nothing (``steps=-5`` ran no step and reported the clean accuracy as robust)."""

import math
from collections.abc import Collection
from typing import Any

from dipdefense.common.errors import UserError


def check_parameter(
    owner: str,
    key: str,
    value: Any,
    annotation: Any,
    may_be_zero: Collection[str] = (),
    error: type[Exception] = UserError,
) -> None:
    """Raise ``error`` unless ``value`` fits ``annotation`` (bool, int, float, str, optionally
    ``| None``): integers must be >= 1 (>= 0 for the names in ``may_be_zero``), floats >= 0
    (inf allowed: a threshold that never refuses). Other annotations (mappings, unions of several kinds) are left to the owner."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    kinds = text.replace(" ", "").replace("typing.", "").split("|")
    if value is None and "None" in kinds:
        return
    kinds = [k for k in kinds if k != "None"]
    if len(kinds) != 1:
        return
    kind = kinds[0]
    if kind == "bool":
        ok, accepted = isinstance(value, bool), "true or false"
    elif kind == "int":
        least = 0 if key in may_be_zero else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        accepted = f"an integer >= {least}"
    elif kind == "float":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, accepted = number and not math.isnan(value) and value >= 0, "a number >= 0 (inf allowed)"
    elif kind == "str":
        ok, accepted = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise error(f"{owner}: {key}={value!r} is not accepted; {key} must be {accepted}")
