"""Where the shipped configs and checkpoints are.

An installed copy (``pip install .``) carries them as package data, ``dipdefense.configs`` and
``dipdefense.checkpoints`` (pyproject.toml maps ``configs/`` and ``checkpoints/`` there); in a
checkout, installed in editable mode or not, the same names find the repository's own folders.
"""

import importlib.util
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]  # dipdefense/common/assets.py


def asset_dir(name: str) -> Path:
    """The folder of shipped ``name`` ("configs" or "checkpoints")."""
    if name not in ("configs", "checkpoints"):
        raise ValueError(f"unknown asset folder {name!r}; accepted: configs, checkpoints")
    try:
        spec = importlib.util.find_spec(f"dipdefense.{name}")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _CHECKOUT / name
