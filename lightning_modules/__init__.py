"""LightningModules: thin glue between the pure-torch pieces and Lightning's Trainer."""

from dipdefense.lightning_modules.autoencoder import AutoencoderPurifier
from dipdefense.lightning_modules.fast_victim import FastVictimClassifier
from dipdefense.lightning_modules.glow import GlowDensity, GlowDetector
from dipdefense.lightning_modules.inc_robust import ManifoldAdversarialTraining
from dipdefense.lightning_modules.vae import VAEGenerator
from dipdefense.lightning_modules.victim import VictimClassifier

__all__ = [
    "AutoencoderPurifier",
    "FastVictimClassifier",
    "GlowDensity",
    "GlowDetector",
    "ManifoldAdversarialTraining",
    "VAEGenerator",
    "VictimClassifier",
]
