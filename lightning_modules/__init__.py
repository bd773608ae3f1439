"""LightningModules: thin glue between the pure-torch pieces and Lightning's Trainer."""

from lightning_modules.autoencoder import AutoencoderPurifier
from lightning_modules.glow import GlowDensity, GlowDetector
from lightning_modules.inc_robust import ManifoldAdversarialTraining
from lightning_modules.vae import VAEGenerator
from lightning_modules.victim import VictimClassifier

__all__ = [
    "AutoencoderPurifier",
    "GlowDensity",
    "GlowDetector",
    "ManifoldAdversarialTraining",
    "VAEGenerator",
    "VictimClassifier",
]
