"""Training a victim classifier: cross-entropy with label smoothing, SGD or AdamW, a
one-cycle or cosine schedule, top-1/top-5 accuracy."""

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from dipdefense.common.checkpoint_io import load_state_dict_strict
from dipdefense.nets import load_classifier
from dipdefense.nets.registry import build_classifier


class VictimClassifier(pl.LightningModule):
    """A classifier from :mod:`nets` (normalisation inside) and its training recipe.

    Arguments:
        arch: architecture name (``nets.ARCHITECTURES``). Default: "resnet20".
        num_classes: Default: 10.
        in_channels: Default: 3.
        image_size: Default: 32.
        mean: per-channel mean or a data set name. Default: "cifar10".
        std: per-channel std (when ``mean`` is numbers). Default: None.
        pretrained: torchvision ImageNet weights (ImageNet architectures). Default: False.
        arch_options: the architecture's own arguments (``nets.build_classifier``), kept in the
            exported checkpoint, e.g. ``{tta_level: 2}`` for airbench94. Default: None.
        optimizer: "sgd" (Nesterov momentum) or "adamw". Default: "sgd".
        lr: peak learning rate. Default: 0.1.
        momentum: SGD momentum. Default: 0.9.
        weight_decay: Default: 5e-4.
        scheduler: "onecycle" (per step), "cosine" (per epoch) or "none". Default: "onecycle".
        warmup_fraction: share of steps rising to the peak in one-cycle. Default: 0.25.
        label_smoothing: Default: 0.1.
        channels_last: NHWC memory format (faster convolutions on CPU and tensor cores). Default: False.
        init_checkpoint: start from the weights of this victim checkpoint (fine-tuning, warm
            restarts); its architecture must match. Default: None.
    """

    checkpoint_kind = "victim"

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        mean: Sequence[float] | str = "cifar10",
        std: Sequence[float] | None = None,
        pretrained: bool = False,
        arch_options: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: str = "onecycle",
        warmup_fraction: float = 0.25,
        label_smoothing: float = 0.1,
        channels_last: bool = False,
        init_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {optimizer!r}; accepted: sgd, adamw")
        if scheduler not in ("onecycle", "cosine", "none"):
            raise ValueError(f"unknown scheduler {scheduler!r}; accepted: onecycle, cosine, none")
        self.save_hyperparameters()
        self.model = build_classifier(arch, num_classes, in_channels, image_size, mean, std, pretrained, arch_options)
        if init_checkpoint:
            source = load_classifier(init_checkpoint)
            load_state_dict_strict(self.model, source.state_dict(), init_checkpoint, f"architecture {arch!r}")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        top_k = min(5, num_classes)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc_top5", MulticlassAccuracy(num_classes, top_k=top_k, average="micro"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        acc, top5 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_acc_top5")
        acc(logits, labels)
        top5(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=True)
        self.log(f"{stage}/acc_top5", top5)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=hp.lr, total_steps=max(total, 1), pct_start=hp.warmup_fraction
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def checkpoint_config(self) -> dict[str, Any]:
        """Builder arguments that ``nets.load_classifier`` needs to rebuild the network."""
        hp = self.hparams
        keys = ("arch", "num_classes", "in_channels", "image_size", "mean", "std")
        config = {k: (list(hp[k]) if isinstance(hp[k], tuple) else hp[k]) for k in keys}
        if hp.get("arch_options"):
            config["arch_options"] = dict(hp.arch_options)
        return config

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()
