"""Load a victim classifier from a checkpoint, as a plain ``nn.Module`` in eval mode."""

import inspect
import os

import torch
from torch import nn

from common.checkpoint_io import load_checkpoint, load_state_dict_strict
from common.errors import CheckpointError
from nets.registry import build_classifier

_BUILD_ARGS = set(inspect.signature(build_classifier).parameters)


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Build the classifier described by a victim checkpoint and load its weights.

    Accepts train.py's exported files and Lightning ``.ckpt`` files of
    :class:`lightning_modules.VictimClassifier`. Pretrained ImageNet weights are never
    fetched here: the checkpoint's own weights are loaded.
    """
    ckpt = load_checkpoint(path, kind="victim")
    config = {k: v for k, v in ckpt["config"].items() if k in _BUILD_ARGS}
    if "arch" not in config:
        raise CheckpointError(f"{path}: checkpoint config has no 'arch' (keys: {sorted(ckpt['config'])})")
    config["pretrained"] = False
    try:
        model = build_classifier(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot build the classifier it describes: {err}") from None
    state = ckpt["state_dict"]
    if ckpt.get("lightning"):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    load_state_dict_strict(model, state, path, f"architecture {config['arch']!r}")
    model.checkpoint_config = dict(ckpt["config"])
    model.checkpoint_metrics = dict(ckpt["metrics"])
    return model.to(map_location).eval()
