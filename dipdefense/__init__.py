"""dip-defense: deep-image-prior adversarial defenses, their victims, attacks and learned
baselines, as a PyTorch Lightning project.

This package is the library, with no Lightning in it: ``common``, ``dip``, ``nets``,
``manifold``, ``defenses``, ``attacks`` and ``evaluation``, from the ground up. The Lightning
layer above it is the checkout's ``lightning_modules/`` and ``datamodules/``; an installed copy
carries those two as ``dipdefense.lightning_modules`` and ``dipdefense.datamodules``, with the
shipped ``configs`` and ``checkpoints`` as package data, so site-packages gets this one name.
docs/layout.md says why.
"""
