"""Balanced clean / adversarial image sets for training an adversarial detector (paper 003,
Sec. 5.2): every sampled image appears once clean (label 0) and once attacked (label 1),
the attacks taking turns, so each class holds half the set and each attack a third of the
adversarial half. Adversarial examples come from ``evaluation``'s cache, keyed exactly as
``evaluate.py`` keys its own, so they are made once and shared."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from dipdefense.common.checkpoint_io import file_sha256, resolve_repo_path
from dipdefense.common.data_paths import cache_root
from dipdefense.evaluation.adversarial_cache import AdversarialCache, cached_attack
from dipdefense.evaluation.attack_specs import expand_attacks, parse_eps
from dipdefense.nets.loading import load_classifier

from .cifar10 import CIFAR10DataModule
from .in_memory import UInt8ImageDataset


class AdversarialDetectionDataModule(pl.LightningDataModule):
    """Arguments:
    victim: the attacked classifier's checkpoint. Default: "checkpoints/victim_cifar_resnet20.ckpt".
    attacks: comma list for ``evaluate.py --attacks``. Default: "fgsm,pgd,deepfool" (paper 003).
    eps: L-inf budget, ``--eps`` syntax (values < 1 are pixel fractions). Default: "0.02" (paper 003).
    attack_params: per-attack parameters. Default: {} (the libraries' defaults, PGD 10 steps).
    num_train: images from the victim's training part of the CIFAR-10 training split. Default: 6000.
    num_val: images from the victim's held-out validation part. Default: 1000.
    holdout: size of that held-out part (the victim's ``val_size``, seed 0). Default: 5000.
    data_dir: CIFAR-10 location (see ``CIFAR10DataModule``). Default: None.
    batch_size: Default: 128.
    chunk_size: images per attack batch and cache entry. Default: 500.
    seed: sampling and attack seed. Default: 0.
    cache_dir: adversarial cache. Default: $DIPDEF_CACHE/adversarial.
    """

    def __init__(
        self,
        victim: str = "checkpoints/victim_cifar_resnet20.ckpt",
        attacks: str = "fgsm,pgd,deepfool",
        eps: str = "0.02",
        attack_params: dict[str, dict[str, Any]] | None = None,
        num_train: int = 6000,
        num_val: int = 1000,
        holdout: int = 5000,
        data_dir: str | None = None,
        batch_size: int = 128,
        chunk_size: int = 500,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.runs = [r for r in expand_attacks(attacks, parse_eps(eps), attack_params or {}) if r.name != "clean"]
        if not self.runs:
            raise ValueError(f"attacks {attacks!r} name no attack besides clean")
        self.victim = resolve_repo_path(victim)
        self.num_train, self.num_val = num_train, num_val
        self.source = CIFAR10DataModule(data_dir=data_dir, val_size=holdout, seed=0)
        self.batch_size, self.chunk_size, self.seed = batch_size, chunk_size, seed
        self.cache = AdversarialCache(Path(cache_dir) if cache_dir else cache_root() / "adversarial")
        self.sets: dict[str, TensorDataset] = {}

    def _balanced(
        self, train: UInt8ImageDataset, split_indices: torch.Tensor, count: int, classifier, key: dict[str, Any]
    ) -> TensorDataset:
        order = torch.randperm(len(split_indices), generator=torch.Generator().manual_seed(self.seed))
        chosen = split_indices[order[:count]].sort().values
        images, adversarial = [], []
        for start in range(0, len(chosen), self.chunk_size):
            indices = chosen[start : start + self.chunk_size]
            x = train.images[indices].float().div(255)
            y = train.labels[indices]
            # Attack r takes every len(runs)-th image of the chunk.
            out = x.clone()
            for r, run in enumerate(self.runs):
                rows = torch.arange(r, len(indices), len(self.runs))
                if len(rows):
                    out[rows] = cached_attack(
                        self.cache, key, run.build(), run.name, run.eps, classifier, x[rows], y[rows], indices[rows],
                        self.seed,
                    )  # fmt: skip
            images.append(x)
            adversarial.append(out)
        clean, attacked = torch.cat(images), torch.cat(adversarial)
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(attacked))])
        return TensorDataset(torch.cat([clean, attacked]), labels)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        classifier = load_classifier(self.victim)
        key = {"victim": file_sha256(self.victim), "dataset": "CIFAR10", "split": "train"}
        self.source.setup("fit")
        # The victim's own split: training part vs its held-out validation part.
        val_part = torch.tensor(self.source.val_set.indices)
        train_part = torch.tensor(self.source.train_set.indices)
        if self.num_train > len(train_part) or self.num_val > len(val_part):
            raise ValueError(f"num_train <= {len(train_part)} and num_val <= {len(val_part)} are available")
        full = self.source.train_set.dataset  # the decoded training split, loaded once by setup()
        self.sets["train"] = self._balanced(full, train_part, self.num_train, classifier, key)
        self.sets["val"] = self._balanced(full, val_part, self.num_val, classifier, key)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
