"""LightningModules: thin glue between the pure-torch pieces and Lightning's Trainer."""

from lightning_modules.victim import VictimClassifier

__all__ = ["VictimClassifier"]
