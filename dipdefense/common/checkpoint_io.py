"""Safe, self-describing checkpoints.

The project's compact format is a plain dict saved with ``torch.save``::

    {"format": "dipdefense", "version": 1, "kind": "victim",
     "config": {...builder arguments...}, "state_dict": {...}, "metrics": {...}}

It is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
arbitrary unpickling. Lightning's own ``.ckpt`` files (from ModelCheckpoint) are read the
same way; their ``hyper_parameters`` stand in for ``config``.
"""

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from dipdefense.common.assets import asset_dir
from dipdefense.common.atomic_files import atomic_torch_save
from dipdefense.common.errors import CheckpointError

FORMAT = "dipdefense"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    metrics: dict[str, float] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a compact checkpoint atomically (temporary file, then rename). ``dtype``: store the
    floating-point tensors in this type (``torch.float16`` halves a float32 file; loading copies
    them into the model's own dtype); integer tensors (BatchNorm's batch counts) are kept."""

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu().contiguous()
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": config,
        "state_dict": {k: stored(v) for k, v in state_dict.items()},
        "metrics": metrics or {},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` and return ``{"kind", "config", "state_dict", "metrics"}``.

    Raises :class:`CheckpointError` with a one-line message naming the file for a missing,
    corrupted, unsafe or wrong-kind file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (expected a {kind} checkpoint written by train.py)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbage/unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        if "Weights only load failed" in str(err):
            reason = "it holds Python objects beyond tensors and plain containers, refused by weights_only loading"
        raise CheckpointError(f"{path} is not a readable {kind} checkpoint: {reason[:200]}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a checkpoint dict (expected a {kind} checkpoint written by train.py)"
        )
    if raw.get("format") == FORMAT:
        if raw.get("kind") != kind:
            raise CheckpointError(f"{path} is a {raw.get('kind')!r} checkpoint, expected a {kind!r} checkpoint")
        return {k: raw.get(k) or {} for k in ("config", "state_dict", "metrics")} | {"kind": kind}
    if "state_dict" in raw and "hyper_parameters" in raw:  # Lightning ModelCheckpoint file
        return {
            "kind": kind,
            "config": dict(raw["hyper_parameters"]),
            "state_dict": raw["state_dict"],
            "metrics": {},
            "lightning": True,
        }
    raise CheckpointError(
        f"{path} is not a {kind} checkpoint: expected train.py's format (keys format/kind/config/state_dict) "
        f"or a Lightning .ckpt, found keys {sorted(raw)[:8]}"
    )


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike, what: str
) -> None:
    """``module.load_state_dict(strict=True)`` with a one-line error on a mismatch, and a
    refusal of non-finite weights (a diverged run's checkpoint evaluates silently otherwise)."""
    broken = [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise CheckpointError(f"{path}: {what} has NaN or infinite weights ({shown}); the run that saved it diverged")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {what}: {_mismatch(module, state_dict, err)}") from None


def _mismatch(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], err: RuntimeError) -> str:
    """What differs, counted and named a few at a time (another network's weights miss hundreds of keys)."""
    expected = module.state_dict()

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != v.shape
    ]
    parts = [f"missing {len(missing)} ({some(missing)})"] if missing else []
    parts += [f"unexpected {len(unexpected)} ({some(unexpected)})"] if unexpected else []
    parts += [f"shapes differ in {len(shapes)} (file vs model: {some(shapes)})"] if shapes else []
    return "; ".join(parts) or " ".join(str(err).split())[:300]


def resolve_repo_path(path: str | os.PathLike) -> Path:
    """A path as given, or a shipped one (``checkpoints/NAME``, ``configs/NAME``) when only that
    exists, whatever the working directory and whether the project is installed or checked out."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists() or given.parts[0] not in ("checkpoints", "configs"):
        return given
    shipped = asset_dir(given.parts[0]).joinpath(*given.parts[1:])
    return shipped if shipped.exists() else given


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: what identifies a checkpoint or weights file in run manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
