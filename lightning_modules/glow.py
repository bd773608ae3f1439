"""Maximum-likelihood training of a Glow on clean images (paper 003, Sec. 4.4), in bits per
dimension, for the latent-space adversarial detector."""

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from nets.glow import bin_centres, bits_per_dim, build_glow, dequantize


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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_glow(tuple(input_shape), levels, steps, hidden_channels)
        self.dims = math.prod(input_shape)

    def _bpd(self, images: torch.Tensor) -> torch.Tensor:
        return bits_per_dim(-self.net.log_prob(images, None), self.dims).mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        bpd = self._bpd(dequantize(batch[0].float()))
        self.log("train/bpd", bpd, prog_bar=True)
        return bpd

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/bpd", self._bpd(bin_centres(batch[0].float())), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test/bpd", self._bpd(bin_centres(batch[0].float())), sync_dist=True)

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
