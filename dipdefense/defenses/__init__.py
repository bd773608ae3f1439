"""Defenses behind one interface (pure torch): purifiers map images to images, detectors
score images; each is registered by name for ``evaluate.py --defense NAME``."""

from dipdefense.defenses import (  # noqa: F401  (register their defenses)
    deep_protection,
    dip_inc,
    dip_stitch,
    dipdefend,
    inc,
    learned,
)
from dipdefense.defenses.base import Defense, Detector, IdentityDefense, Purified, Purifier
from dipdefense.defenses.defended import DefendedClassifier
from dipdefense.defenses.registry import DEFENSES, build_defense, register_defense

__all__ = [
    "DEFENSES",
    "DefendedClassifier",
    "Defense",
    "Detector",
    "IdentityDefense",
    "Purified",
    "Purifier",
    "build_defense",
    "register_defense",
]
