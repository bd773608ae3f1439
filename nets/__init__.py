"""Classifier network builders (pure torch, no Lightning)."""

from nets.loading import load_classifier
from nets.registry import ARCHITECTURES, build_classifier

__all__ = ["ARCHITECTURES", "build_classifier", "load_classifier"]
