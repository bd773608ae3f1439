"""LightningModules: thin glue between the pure-torch pieces and Lightning's Trainer."""

from .autoencoder import AutoencoderPurifier
from .fast_victim import FastVictimClassifier
from .glow import GlowDensity, GlowDetector
from .inc_robust import ManifoldAdversarialTraining
from .vae import VAEGenerator
from .victim import VictimClassifier

__all__ = [
    "AutoencoderPurifier",
    "FastVictimClassifier",
    "GlowDensity",
    "GlowDetector",
    "ManifoldAdversarialTraining",
    "VAEGenerator",
    "VictimClassifier",
]
