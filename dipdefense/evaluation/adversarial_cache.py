"""Adversarial examples computed once and stored on disk.

An entry is keyed by everything that determines it: the victim checkpoint's content
hash, the data set, the attack with all its parameters, the exact dataset indices of the
chunk and the chunk's seed. Entries are written to a temporary file and renamed, so an
interrupted run never leaves a half file that a later run reads as whole; an unreadable
or mismatching entry is recomputed.
"""

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dipdefense.common.atomic_files import atomic_torch_save
from dipdefense.common.per_image_rng import attack_seed, per_image_draws
from dipdefense.common.seeding import item_seed

# How an attack's randomness is seeded (``cached_attack``); a run records it in run.json.
PER_IMAGE, PER_CHUNK = "per-image", "per-chunk"
ATTACK_RNGS = (PER_IMAGE, PER_CHUNK)


class AdversarialCache:
    """Arguments:
    root: folder of the cache (``$DIPDEF_CACHE/adversarial`` by default in evaluate.py).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: dict[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return self.root / key["victim"][:16] / key["attack"] / f"{digest}.pt"

    def load_entry(self, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The stored tensors for ``key`` ("images", and "history" for adaptive attacks)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("key") == json.dumps(key, sort_keys=True):
                return {name: t for name, t in entry.items() if name != "key"}
        except Exception as err:  # a corrupted entry is recomputed, never trusted
            warnings.warn(f"ignoring unreadable cache entry {path}: {err}", stacklevel=2)
        return None

    def load(self, key: dict[str, Any]) -> torch.Tensor | None:
        entry = self.load_entry(key)
        return None if entry is None else entry["images"]

    def store(self, key: dict[str, Any], images: torch.Tensor, **extra: torch.Tensor) -> Path:
        entry = {"key": json.dumps(key, sort_keys=True), "images": images.detach().cpu()}
        entry |= {name: t.detach().cpu() for name, t in extra.items()}
        return atomic_torch_save(entry, self.path_for(key))

    def get_or_create_entry(
        self, key: dict[str, Any], create: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The cached tensors for ``key``, or ``create()``'s (a dict with "images"), stored first."""
        cached = self.load_entry(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        entry = create()
        self.store(key, **entry)
        return entry

    def get_or_create(self, key: dict[str, Any], create: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached images for ``key``, or ``create()``'s result, stored first."""
        return self.get_or_create_entry(key, lambda: {"images": create()})["images"]


def cached_attack(
    cache: AdversarialCache,
    cache_key: dict[str, Any],
    attack: Any,
    attack_name: str,
    eps: float | None,
    classifier: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    attack_rng: str = PER_IMAGE,
) -> torch.Tensor:
    """The adversarial version of one chunk, from the cache or made and stored. ``attack_rng``
    "per-image": the attack's batch-shaped random draws come from each image's own seed
    (``common.per_image_rng``), so an image's adversarial example does not depend on its chunk;
    what the attack draws otherwise, and everything under "per-chunk" (runs started before
    per-image draws, which resume as they began), is seeded by (seed, first index of the
    chunk), so a chunk's examples do not depend on which process or run makes them. ``cache_key`` names the
    victim (its SHA-256) and the data set; for an attack through a defense it also names the
    defense and its parameters (``cached_attack_entry``)."""
    entry = cached_attack_entry(
        cache, cache_key, attack, attack_name, eps, classifier, images, labels, indices, seed, attack_rng
    )
    return entry["images"]


def attack_entry_key(
    cache_key: dict[str, Any],
    attack: Any,
    attack_name: str,
    eps: float | None,
    indices: torch.Tensor,
    seed: int,
    attack_rng: str = PER_IMAGE,
) -> dict[str, Any]:
    """The cache key of one chunk's attack (``cached_attack_entry``)."""
    if attack_rng not in ATTACK_RNGS:
        raise ValueError(f"attack_rng {attack_rng!r}: one of {', '.join(ATTACK_RNGS)} is accepted")
    key = {
        **cache_key,
        "attack": attack_name,
        "eps": eps,
        "params": attack.params(),
        "indices": indices.tolist(),
        "seed": item_seed(seed, indices[0]),
    }
    if attack_rng == PER_IMAGE:  # only then, so per-chunk runs keep finding their entries
        key["attack_rng"] = PER_IMAGE
    return key


def cached_attack_entry(
    cache: AdversarialCache,
    cache_key: dict[str, Any],
    attack: Any,
    attack_name: str,
    eps: float | None,
    classifier: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    attack_rng: str = PER_IMAGE,
    prefixes: Sequence[Any] = (),
) -> dict[str, torch.Tensor]:
    """``cached_attack`` with what else the attack kept: "history" [B, iterates], whether the
    defended victim was still right at each iterate (the adaptive attacks' ``last_history``),
    "queries" [B], the model calls each image paid (the decision attacks' ``last_queries``), and
    "start_queries" [B], how many of them found its start (HopSkipJump's ``last_start_queries``),
    and "answers" [B], the label its oracle answered on each returned input (``last_answers``;
    -1 where it never asked that input), and "resubmit" [B, R], whether the defended victim was
    right on each resubmitted copy (``last_resubmit``).

    ``prefixes``: attacks that are this one with a smaller query budget (HopSkipJump's
    ``snapshot_budgets``); when this one is computed, their entries are stored from its
    snapshots, so they cost nothing more."""
    key = attack_entry_key(cache_key, attack, attack_name, eps, indices, seed, attack_rng)

    def create() -> dict[str, torch.Tensor]:
        draws = per_image_draws([attack_seed(seed, i) for i in indices.tolist()]) if attack_rng == PER_IMAGE else None
        if prefixes:
            attack.snapshot_budgets = tuple(p.queries for p in prefixes)
        with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
            torch.manual_seed(key["seed"])  # what is not drawn per image
            with draws or contextlib.nullcontext():
                entry = {"images": attack(classifier, images, labels)}
        kept_by_attack = (
            ("history", "last_history"),
            ("queries", "last_queries"),
            ("start_queries", "last_start_queries"),
            ("answers", "last_answers"),
            ("resubmit", "last_resubmit"),
        )
        for name, kept in kept_by_attack:
            if getattr(attack, kept, None) is not None:
                entry[name] = getattr(attack, kept)
        for prefix in prefixes:
            snapshot, spent = attack.last_snapshots[prefix.queries]
            prefix_key = attack_entry_key(cache_key, prefix, attack_name, eps, indices, seed, attack_rng)
            extra = {"queries": spent}
            if getattr(attack, "last_start_queries", None) is not None:
                # a run with the smaller budget would have stopped its start at that budget
                extra["start_queries"] = attack.last_start_queries.clamp(max=prefix.queries)
            if prefix.queries in getattr(attack, "last_snapshot_answers", {}):
                extra["answers"] = attack.last_snapshot_answers[prefix.queries]
            cache.store(prefix_key, snapshot, **extra)
        return entry

    return {name: t.to(images.device) for name, t in cache.get_or_create_entry(key, create).items()}
