"""Load networks from checkpoints, as plain ``nn.Module``s in eval mode."""

import inspect
import os
from collections.abc import Callable

import torch
from torch import nn

from dipdefense.common.checkpoint_io import load_checkpoint, load_state_dict_strict, resolve_repo_path
from dipdefense.common.errors import CheckpointError
from dipdefense.nets.registry import build_classifier


def _offline_classifier(**config) -> nn.Module:
    """``build_classifier`` that never fetches pretrained ImageNet weights: the checkpoint's are loaded."""
    if "arch" not in config:
        raise ValueError(f"its config has no 'arch' (keys: {sorted(config)})")
    return build_classifier(**{**config, "pretrained": False})


_offline_classifier.__signature__ = inspect.signature(build_classifier)


def load_classifier(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", arch_options: dict | None = None
) -> nn.Module:
    """Build the classifier described by a victim checkpoint and load its weights.

    Accepts train.py's exported files and Lightning ``.ckpt`` files of
    :class:`lightning_modules.VictimClassifier`. Pretrained ImageNet weights are never
    fetched here: the checkpoint's own weights are loaded. ``arch_options`` replace the
    checkpoint's own (e.g. ``{"tta_level": 0}`` for an airbench94 victim without its test-time
    augmentation); an architecture that does not take one refuses it.
    """
    if not arch_options:
        return load_network(path, "victim", _offline_classifier, map_location, lightning_prefix="model.")

    def with_options(**config) -> nn.Module:
        return _offline_classifier(**{**config, "arch_options": {**(config.get("arch_options") or {}), **arch_options}})

    with_options.__signature__ = _offline_classifier.__signature__
    model = load_network(path, "victim", with_options, map_location, lightning_prefix="model.")
    model.checkpoint_config["arch_options"] = {**model.checkpoint_config.get("arch_options", {}), **arch_options}
    return model


def load_network(
    path: str | os.PathLike,
    kind: str,
    builder: Callable[..., nn.Module],
    map_location: str | torch.device = "cpu",
    lightning_prefix: str = "net.",
) -> nn.Module:
    """Build ``builder(**config)`` from a checkpoint of ``kind`` (train.py's export, or a
    Lightning ``.ckpt`` whose module keeps the network as ``lightning_prefix``) and load it."""
    ckpt = load_checkpoint(resolve_repo_path(path), kind=kind)
    accepted = set(inspect.signature(builder).parameters)
    config = {k: v for k, v in ckpt["config"].items() if k in accepted}
    try:
        model = builder(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot build the {kind} it describes: {err}") from None
    state = ckpt["state_dict"]
    if ckpt.get("lightning"):
        state = {k.removeprefix(lightning_prefix): v for k, v in state.items() if k.startswith(lightning_prefix)}
    load_state_dict_strict(model, state, path, f"the {kind} ({config})")
    model.checkpoint_config = dict(ckpt["config"])
    model.checkpoint_metrics = dict(ckpt["metrics"])
    return model.to(map_location).eval()


def load_autoencoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The autoencoder purifier (``nets.autoencoder.ConvAutoencoder``) of a checkpoint."""
    from dipdefense.nets.autoencoder import ConvAutoencoder

    return load_network(path, "autoencoder", ConvAutoencoder, map_location)


def load_glow(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The Glow (``nets.glow.build_glow``) of a checkpoint."""
    from dipdefense.nets.glow import build_glow

    def builder(input_shape=(3, 32, 32), levels=3, steps=8, hidden_channels=128) -> nn.Module:
        return build_glow(tuple(input_shape), levels, steps, hidden_channels)

    return load_network(path, "glow", builder, map_location)


def load_glow_detector(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The Glow-latent detector (``nets.glow_detector.GlowLatentDetector``) of a checkpoint."""
    from dipdefense.nets.glow_detector import GlowLatentDetector

    return load_network(path, "glow_detector", GlowLatentDetector, map_location)


def load_vae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The VAE (``nets.vae.VAE``) of a checkpoint; its ``decode`` is INC's generator. The
    checkpoint config's calibrated ``inversion_eta`` (if any) is in ``checkpoint_config``."""
    from dipdefense.nets.vae import VAE

    def builder(arch="mlp", image_shape=(1, 28, 28), latent_dim=20, hidden=(500, 500)) -> nn.Module:
        return VAE(arch, tuple(image_shape), latent_dim, tuple(hidden))

    return load_network(path, "vae", builder, map_location)
