"""Any classifier as the victim: one spec string for the project's checkpoints, a user's own
callable, a timm or torchvision architecture with the user's weights, or a RobustBench model.

Whatever the kind, ``load_victim`` returns an eval-mode ``nn.Module`` that takes images in [0, 1]
(a normalisation, when asked for, is its first layer), as RobustBench, torchattacks and foolbox
take any model; ``victim.victim_source`` says what it is, for run manifests and cache keys.

    checkpoints/victim_cifar_resnet20.ckpt      a project checkpoint (train.py --export)
    mypkg.models:build_net                      an importable callable returning an nn.Module
    path/to/file.py:build_net                   the same, from a file
    timm:resnet18                               timm's architecture with --victim-weights FILE
    torchvision:resnet18                        torchvision's architecture with --victim-weights FILE
    robustbench:Carmon2019Unlabeled             RobustBench's CIFAR-10 zoo (Linf); L2/NAME, corruptions/NAME
"""

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dipdefense.common.checkpoint_io import file_sha256, load_state_dict_strict, resolve_repo_path
from dipdefense.common.errors import CheckpointError, UserError
from dipdefense.nets.normalize import DATASET_STATS, Normalize

VICTIM_KINDS = {
    "checkpoint": "a project checkpoint file (train.py --export)",
    "callable": "module.path:function or path/to/file.py:function, returning an nn.Module",
    "timm": "timm:NAME, timm's architecture (weights from --victim-weights)",
    "torchvision": "torchvision:NAME, torchvision's architecture (weights from --victim-weights)",
    "robustbench": "robustbench:NAME or robustbench:THREAT/NAME (CIFAR-10; THREAT Linf, L2 or corruptions)",
}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")
_CALLABLE = re.compile(r"^(?P<where>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class VictimSource:
    """What a loaded victim is: its spec, kind, weights file and its sha256, normalisation, and a
    sha256 of its weights as loaded (the identity resume and the adversarial cache key on)."""

    spec: str
    kind: str
    weights: str | None
    weights_sha256: str | None
    normalize: list[list[float]] | None
    sha256: str
    options: dict[str, Any] | None = None  # a project checkpoint's architecture options

    def manifest(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def function_sha256(self) -> str:
        """The identity of the function the victim computes: ``sha256``, or with architecture
        options (airbench94's ``tta_level``: the same weights, another function) those hashed
        in, so that the adversarial cache keeps their examples apart."""
        if not self.options:
            return self.sha256
        return hashlib.sha256((self.sha256 + json.dumps(self.options, sort_keys=True)).encode()).hexdigest()


def default_robustbench_dir() -> Path:
    """Where RobustBench models are looked for: ``$DIPDEF_ROBUSTBENCH``, else the user's cache."""
    return Path(os.environ.get("DIPDEF_ROBUSTBENCH", Path.home() / ".cache" / "dipdefense" / "robustbench"))


def victim_kind(spec: str) -> str:
    """The kind of a victim spec (one of ``VICTIM_KINDS``)."""
    prefix = spec.split(":", 1)[0]
    if ":" in spec and prefix in ("timm", "torchvision", "robustbench"):
        return prefix
    if _CALLABLE.match(spec) and not Path(spec).exists():
        return "callable"
    return "checkpoint"


def resolve_normalize(normalize: str | Sequence[Sequence[float]] | None, channels: int) -> list[list[float]] | None:
    """A data set name (``DATASET_STATS``) or [mean, std] lists, as [mean, std] per channel."""
    if normalize is None or normalize == "none":
        return None
    if isinstance(normalize, str):
        if normalize not in DATASET_STATS:
            raise UserError(
                f"--victim-normalize {normalize!r}: accepted: {', '.join(DATASET_STATS)}, or mean and std lists"
            )
        mean, std = DATASET_STATS[normalize]
    else:
        if len(normalize) != 2:
            raise UserError(f"--victim-normalize {normalize!r}: give [mean, std], each a list of per-channel values")
        mean, std = normalize
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise UserError(f"--victim-normalize: {len(mean)} means and {len(std)} stds (> 0) for {channels} channels")
    return [mean, std]


def state_sha256(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes, dtypes and bytes), in order."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _import_callable(spec: str) -> Any:
    where, function = _CALLABLE.match(spec).group("where", "function")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise UserError(f"victim {spec!r}: no such file {path}")
            name = f"dipdefense_victim_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as err:  # the user's module may raise anything while importing
        last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise UserError(f"victim {spec!r}: {where} does not import: {type(err).__name__}: {last}") from None
    if not callable(builder := getattr(module, function, None)):
        raise UserError(f"victim {spec!r}: {where} has no callable {function!r}")
    return builder


def _read_state_dict(weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--victim-weights {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"--victim-weights {path} is not a readable weights file: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(
            f"--victim-weights {path}: expected a state dict (or a dict holding one under 'state_dict' or 'model')"
        )
    return raw


def _load_weights(model: nn.Module, weights: str | os.PathLike, what: str) -> None:
    state = _read_state_dict(weights)
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"--victim-weights {weights} does not fit {what}: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}"
        )
    load_state_dict_strict(model, state, weights, what)


def _library_model(kind: str, name: str, num_classes: int) -> nn.Module:
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise UserError(f"victim timm:{name}: timm has no architecture {name!r} (timm.list_models() lists them)")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    import torchvision

    if name not in torchvision.models.list_models():
        raise UserError(
            f"victim torchvision:{name}: torchvision has no model {name!r} (torchvision.models.list_models())"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _robustbench_model(target: str, victim_dir: Path, download: bool) -> nn.Module:
    threat, _, name = target.rpartition("/")
    threat = threat or "Linf"
    if threat not in ROBUSTBENCH_THREATS:
        raise UserError(f"victim robustbench:{target}: threat {threat!r}; accepted: {', '.join(ROBUSTBENCH_THREATS)}")
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    except ImportError as err:
        raise UserError(
            f"victim robustbench:{target}: robustbench does not import ({err}); install it with "
            "pip install 'dip-defense[robustbench]' and AutoAttack from github.com/fra31/auto-attack"
        ) from None
    known = model_dicts[BenchmarkDataset.cifar_10][ThreatModel(threat)]
    if name not in known:
        close = [k for k in known if name.lower()[:6] in k.lower()][:5]
        raise UserError(
            f"victim robustbench:{target}: RobustBench knows no CIFAR-10 {threat} model {name!r}"
            + (f" (close: {', '.join(close)})" if close else "")
        )
    path = victim_dir / "cifar10" / threat / f"{name}.pt"
    if not path.is_file() and not download:
        raise UserError(f"victim robustbench:{target}: {path} is absent; put the file there or pass --download")
    return load_model(name, model_dir=str(victim_dir), dataset="cifar10", threat_model=threat)


def load_victim(
    spec: str,
    weights: str | os.PathLike | None = None,
    normalize: str | Sequence[Sequence[float]] | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    victim_dir: str | os.PathLike | None = None,
    download: bool = False,
    arch_options: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """The classifier a spec names, in eval mode, taking images in [0, 1].

    Arguments:
        spec: a project checkpoint path, ``module.path:function``, ``path/file.py:function``,
            ``timm:NAME``, ``torchvision:NAME`` or ``robustbench:[THREAT/]NAME`` (``VICTIM_KINDS``).
        weights: a state dict file (or a dict holding one under "state_dict" / "model"), loaded
            with ``weights_only=True`` and strictly; for the callable, timm and torchvision kinds.
            Default: None.
        normalize: a data set name (``nets.normalize.DATASET_STATS``) or [mean, std] lists, put in
            front of the model; a project checkpoint normalises itself. Default: None.
        num_classes: the data set's class count (timm and torchvision build their head with it).
            Default: 10.
        in_channels: the data set's image channels (for ``normalize``). Default: 3.
        victim_dir: RobustBench's model directory. Default: ``default_robustbench_dir()``.
        download: let RobustBench download a model that is absent. Default: False.
        arch_options: a project checkpoint's architecture options (``nets.load_classifier``). Default: None.
        map_location: Default: "cpu".
    """
    from dipdefense.nets.loading import load_classifier

    kind = victim_kind(spec)
    if kind == "checkpoint":
        if weights is not None or normalize not in (None, "none"):
            raise UserError(
                f"victim {spec}: a project checkpoint carries its weights and normalisation; --victim-weights "
                "and --victim-normalize are for the other kinds: " + "; ".join(list(VICTIM_KINDS.values())[1:])
            )
        path = resolve_repo_path(spec)
        if not path.is_file():
            kinds = "; ".join(VICTIM_KINDS.values())
            raise UserError(f"victim {spec!r}: no such checkpoint file, and no spec of another kind; accepted: {kinds}")
        model = load_classifier(path, map_location, arch_options)
        model.victim_source = VictimSource(spec, kind, None, None, None, file_sha256(path), arch_options or None)
        return model
    if arch_options:
        raise UserError(f"victim {spec}: --victim_options is for project checkpoints (their architecture's options)")
    target = spec.split(":", 1)[1] if kind != "callable" else spec
    stats = resolve_normalize(normalize, in_channels)
    if kind == "robustbench":
        if weights is not None:
            raise UserError(f"victim {spec}: RobustBench loads its own weights; drop --victim-weights")
        model = _robustbench_model(target, Path(victim_dir or default_robustbench_dir()).expanduser(), download)
    else:
        if kind == "callable":
            model = _import_callable(spec)()
            if not isinstance(model, nn.Module):
                raise UserError(f"victim {spec!r} returned a {type(model).__name__}, not an nn.Module")
        else:
            if weights is None:
                raise UserError(
                    f"victim {spec}: give its weights with --victim-weights FILE (a state dict); "
                    "pretrained weights are never downloaded"
                )
            model = _library_model(kind, target, num_classes)
        if weights is not None:
            _load_weights(model, weights, f"victim {spec}")
    # Said only of a model the user built (timm and torchvision models are built here); read before
    # a fresh Sequential, in training mode, wraps it.
    was_training = model.training and kind in ("callable", "robustbench")
    if stats is not None:
        model = nn.Sequential(Normalize(*stats), model)
    model = model.to(map_location)
    weights_hash = file_sha256(weights) if weights is not None else None
    model.victim_source = VictimSource(
        spec, kind, str(weights) if weights is not None else None, weights_hash, stats, state_sha256(model)
    )
    model.was_training = was_training
    return model.eval()


def check_input_contract(model: nn.Module, image_shape: Sequence[int], num_classes: int, spec: str) -> None:
    """The victim runs on two images of the data set's shape and returns (2, num_classes) float
    logits; one clear error otherwise, before any attack or fit."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as err:
        last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        raise UserError(
            f"victim {spec} fails on the data set's images (2 x {tuple(image_shape)} in [0, 1]): "
            f"{type(err).__name__}: {last}"
        ) from None
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise UserError(f"victim {spec} returned {type(logits).__name__}, not a float tensor of logits")
    if tuple(logits.shape) != (2, num_classes):
        raise UserError(
            f"victim {spec} returned logits of shape {tuple(logits.shape)} for 2 images; the data set has "
            f"{num_classes} classes, so (2, {num_classes}) is needed"
        )
