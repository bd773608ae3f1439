"""An evaluation's output folder: whose records it holds, who may write to it, what a killed
run left behind."""

import errno
import fcntl
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dipdefense.common.errors import UserError
from dipdefense.evaluation.sample_log import read_run_records

LOCK_NAME = ".lock"


def recorded_batch_size(previous: dict[str, Any]) -> int | None:
    """The chunk size of a run whose run.json predates the ``batch_size`` key: from its command
    (``--batch-size N`` / ``--batch_size N``), else evaluate.py's default then, 100. A config file
    could have set it, so a command naming ``--config`` without the flag gives None (unknown)."""
    words = str(previous.get("command", "")).replace("=", " ").split()
    for flag in ("--batch-size", "--batch_size"):
        if flag in words and words.index(flag) + 1 < len(words):
            value = words[words.index(flag) + 1]
            return int(value) if value.isdigit() else None
    return None if "--config" in words else 100


# Keys a run.json may lack because it was written before they were recorded, and how to read
# them off such a file (None: unknown, and an unknown value is accepted, as it was then).
LEGACY_KEYS = {
    "batch_size": recorded_batch_size,
    "sample_sha256": lambda previous: None,
    "attack_rng": lambda previous: "per-chunk",
}


def inherited_attack_rng(out: Path) -> str:
    """How the run in ``out`` seeds its attacks: as its run.json says; "per-chunk" for a run
    begun before run.json recorded it (it resumes with the draws it began with); "per-image"
    for a new run."""
    try:
        previous = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return "per-image"  # no run yet (an unreadable run.json is refused by check_out_dir)
    if not isinstance(previous, dict):
        return "per-image"
    return str(previous.get("attack_rng") or LEGACY_KEYS["attack_rng"](previous))


# Attack parameters recorded since some runs began, each with the value those runs ran under (the
# attack behaved so before it had the option): a run.json lacking one resumes under that value
# only. bpda_pgd's L2 and on-range steps came on 2026-12-03.
ATTACK_PARAMS_ADDED_LATER = {"bpda_pgd": {"step": "sign", "on_range": False}}


def _fill_attack_params_added_later(previous: dict[str, Any]) -> None:
    for entry in previous.get("attacks") or ():
        params = entry.get("params") if isinstance(entry, dict) else None
        if isinstance(params, dict):
            for key, value in ATTACK_PARAMS_ADDED_LATER.get(params.get("name"), {}).items():
                params.setdefault(key, value)


# Manifest keys written only when set, so that plain runs' manifests stay as they were: a run
# that had one differs from a run without it.
ONLY_WHEN_SET = ("attack_victim_sha256", "victim_options", "victim_source", "survivors_of")


def check_out_dir(
    out: Path,
    manifest: dict[str, Any],
    prefix_sha256: Callable[[int], str] | None = None,
    sample_indices: Sequence[int] | None = None,
) -> int | None:
    """Refuse an ``out`` that holds another run's records; nothing is written here.

    A run may grow: more images of the same seed extend its sample (the draw is a prefix of one
    seeded permutation), so ``--num-samples 100`` on a finished 32-image run attacks the 68 new
    images and keeps the 32 records. Allowed when only the sample differs, the old sample is the
    new one's prefix (``prefix_sha256(n)`` hashes the first n images) and it ends on a chunk
    boundary, so every chunk is the one a fresh run would have. A run.json from before the
    sample's hash was recorded grows when its records' images are the first of
    ``sample_indices`` (the new draw's dataset indices). Returns the old sample size when the
    run grows, else None."""
    existing = out / "run.json"
    if existing.is_file():
        try:
            previous = json.loads(existing.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{existing} is unreadable; delete {out} or choose another --out") from None
        if not isinstance(previous, dict):
            raise UserError(f"{existing} is not a run manifest; delete {out} or choose another --out")
        unhashed_sample = "sample_sha256" in manifest and "sample_sha256" not in previous
        for key, read in LEGACY_KEYS.items():
            if key in manifest and key not in previous:
                recorded = read(previous)
                previous[key] = manifest[key] if recorded is None else recorded
        _fill_attack_params_added_later(previous)
        # the command and the device's notes may change between a run's parts
        differing = [k for k in manifest if k not in ("command", "notes") and previous.get(k) != manifest[k]]
        differing += [k for k in ONLY_WHEN_SET if k in previous and k not in manifest]
        grown_from = None
        if set(differing) == {"num_samples", "sample_sha256"} and prefix_sha256 is not None:
            recorded_hash = previous.get("sample_sha256")
            grown_from = _grown_from(previous, manifest, lambda old: prefix_sha256(old) == recorded_hash)
        elif unhashed_sample and set(differing) == {"num_samples"} and sample_indices is not None:
            grown_from = _grown_from(previous, manifest, lambda old: _records_among(out, sample_indices[:old]))
        if grown_from is not None:
            return grown_from
        if differing:
            raise UserError(
                f"--out {out} holds another run's records ({', '.join(differing)} differ); "
                "choose another --out or delete that folder"
            )
    elif (out / "samples.jsonl").is_file():
        raise UserError(f"--out {out} holds samples.jsonl without run.json; choose another --out or delete that folder")
    return None


def _records_among(out: Path, indices: Sequence[int]) -> bool:
    """Whether the run in ``out`` has records and every image they name is in ``indices``."""
    recorded = {r.get("index") for r in read_run_records(out)}
    return bool(recorded) and recorded <= set(indices)


def _grown_from(previous: dict[str, Any], manifest: dict[str, Any], is_prefix: Callable[[int], bool]) -> int | None:
    """The old sample size if ``manifest`` extends the run in ``previous`` (see check_out_dir;
    ``is_prefix(old)``: the old sample is the new one's first ``old`` images); a shrink or another
    draw is None (refused as another run); a grow off a chunk boundary is refused here, saying
    which sizes would do."""
    old, new, chunk = previous.get("num_samples"), manifest["num_samples"], manifest["batch_size"]
    if not isinstance(old, int) or not 0 < old < new or not is_prefix(old):
        return None
    if old % chunk:
        raise UserError(
            f"--num_samples {new}: this run's {old} images end mid-chunk (--batch_size {chunk}), so its last "
            f"chunk would differ from a fresh run's; it grows only from a multiple of {chunk} images"
        )
    return old


class OutputLock:
    """An exclusive lock on ``out`` for the run's lifetime (``flock`` on ``out/.lock``): a second
    evaluation started on the same folder stops with a clear error instead of interleaving its
    records and results with the first's. The kernel drops the lock when the process dies, so
    a killed run never leaves a stale lock behind."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(
                    f"--out {self.path.parent} is in use by another evaluation (pid {holder}); wait for it to end "
                    "or choose another --out"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a ``kill -9`` interrupted (the caller
    holds :class:`OutputLock`, so no live writer owns them). Returns what was removed."""
    removed = []
    for folder in (out, *(p for p in out.rglob("*") if p.is_dir())):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
