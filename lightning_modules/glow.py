"""Glow on clean images by maximum likelihood (paper 003, Sec. 4.4), in bits per dimension,
and the detector that classifies its latents (Sec. 5.2)."""

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from dipdefense.common.checkpoint_io import load_state_dict_strict, resolve_repo_path
from dipdefense.nets.glow import bits_per_dim, build_glow, dequantize
from dipdefense.nets.glow_detector import GlowLatentDetector
from dipdefense.nets.loading import load_glow


class GlowDensity(pl.LightningModule):
    """A normflows Glow (``nets.glow.build_glow``) fitted by maximum likelihood with uniform
    dequantisation; logs train/val/test bits per dimension.

    Arguments:
        input_shape: (C, H, W). Default: (3, 32, 32).
        levels: L. Default: 3.
        steps: K per level. Default: 8.
        hidden_channels: coupling network width. Default: 128.
        lr: Adam learning rate (linear warm-up over ``warmup_steps``). Default: 1e-3.
        warmup_steps: Default: 500.
        init_checkpoint: start from this Glow checkpoint (to continue training, or with
            ``--trainer.max_epochs 0`` to test it). Default: None.
    """

    checkpoint_kind = "glow"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 128,
        lr: float = 1e-3,
        warmup_steps: int = 500,
        init_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_glow(tuple(input_shape), levels, steps, hidden_channels)
        if init_checkpoint:
            path = resolve_repo_path(init_checkpoint)
            load_state_dict_strict(self.net, load_glow(path).state_dict(), path, "this Glow configuration")
        self.dims = math.prod(input_shape)

    def _bpd(self, images: torch.Tensor) -> torch.Tensor:
        return bits_per_dim(-self.net.log_prob(images, None), self.dims).mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        bpd = self._bpd(dequantize(batch[0].float()))
        self.log("train/bpd", bpd, prog_bar=True)
        return bpd

    def _held_out_bpd(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # The standard estimate (uniform dequantisation), with noise fixed per batch so that
        # epochs and runs compare.
        generator = torch.Generator(images.device).manual_seed(batch_idx)
        return self._bpd(dequantize(images.float(), generator))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/bpd", self._held_out_bpd(batch[0], batch_idx), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test/bpd", self._held_out_bpd(batch[0], batch_idx), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def checkpoint_config(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "input_shape": list(hp.input_shape),
            "levels": hp.levels,
            "steps": hp.steps,
            "hidden_channels": hp.hidden_channels,
        }

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()


class GlowDetector(pl.LightningModule):
    """The Glow-latent adversarial detector (paper 003, Sec. 5.2): a frozen Glow from
    ``glow_checkpoint`` and a 5-layer MLP trained with binary cross-entropy on balanced clean
    (0) / adversarial (1) images (``datamodules.AdversarialDetectionDataModule``). Logs
    accuracy and ROC-AUC.

    Arguments:
        glow_checkpoint: a GlowDensity export. Default: "checkpoints/glow_cifar.ckpt".
        hidden: the MLP's four hidden widths. Default: (512, 256, 128, 64).
        lr: Adam learning rate. Default: 1e-3.
        weight_decay: Default: 1e-4.
    """

    checkpoint_kind = "glow_detector"

    def __init__(
        self,
        glow_checkpoint: str = "checkpoints/glow_cifar.ckpt",
        hidden: Sequence[int] = (512, 256, 128, 64),
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        glow = load_glow(resolve_repo_path(glow_checkpoint))
        self.glow_config = dict(glow.checkpoint_config)
        self.net = GlowLatentDetector(self.glow_config, hidden)
        self.net.glow.load_state_dict(glow.state_dict())
        self.net.glow.requires_grad_(False)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", BinaryAccuracy())
        for stage in ("val", "test"):
            setattr(self, f"{stage}_auroc", BinaryAUROC())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, targets.float())
        acc = getattr(self, f"{stage}_acc")
        acc(logits.sigmoid(), targets.long())
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, prog_bar=True)
        if stage != "train":
            auroc = getattr(self, f"{stage}_auroc")
            auroc(logits.sigmoid(), targets.long())
            self.log(f"{stage}/auroc", auroc)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.net.mlp.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def checkpoint_config(self) -> dict[str, Any]:
        return {"glow": self.glow_config, "hidden": list(self.hparams.hidden)}

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()
