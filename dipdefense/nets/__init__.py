"""Classifier network builders (pure torch, no Lightning)."""

from dipdefense.nets.loading import (
    load_autoencoder,
    load_classifier,
    load_glow,
    load_glow_detector,
    load_network,
    load_vae,
)
from dipdefense.nets.registry import ARCHITECTURES, build_classifier
from dipdefense.nets.victims import VICTIM_KINDS, load_victim

__all__ = [
    "ARCHITECTURES",
    "VICTIM_KINDS",
    "build_classifier",
    "load_autoencoder",
    "load_classifier",
    "load_glow",
    "load_glow_detector",
    "load_network",
    "load_vae",
    "load_victim",
]
