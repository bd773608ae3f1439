"""Training the autoencoder purifier (paper 003, Sec. 4.3) on clean images."""

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from dipdefense.common.ssim import per_image_ssim
from dipdefense.nets.autoencoder import ConvAutoencoder


class AutoencoderPurifier(pl.LightningModule):
    """MSE reconstruction of clean images; logs reconstruction MSE, PSNR and SSIM.

    Arguments:
        in_channels: Default: 3.
        channels: (hidden, code) widths of ``nets.autoencoder.ConvAutoencoder``. Default: (64, 16).
        kernel: encoder kernel size. Default: 3.
        lr: Adam learning rate. Default: 1e-3.
        weight_decay: Default: 0.
        noise_std: Gaussian noise added to the *inputs* during training (a denoising
            autoencoder; 0 is paper 003's plain autoencoder). Default: 0.
    """

    checkpoint_kind = "autoencoder"

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 16),
        kernel: int = 3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ConvAutoencoder(in_channels, channels, kernel)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, _ = batch
        inputs = images
        if self.hparams.noise_std > 0:
            inputs = (images + self.hparams.noise_std * torch.randn_like(images)).clamp(0, 1)
        loss = F.mse_loss(self(inputs).float(), images.float())
        self.log("train/mse", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, _ = batch
        recon = self(images).float().clamp(0, 1)
        mse = (recon - images).pow(2).flatten(1).mean(1)
        self.log(f"{stage}/mse", mse.mean(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/psnr", (-10 * torch.log10(mse.clamp_min(1e-10))).mean(), sync_dist=True)
        self.log(f"{stage}/ssim", per_image_ssim(recon, images).mean(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def checkpoint_config(self) -> dict[str, Any]:
        hp = self.hparams
        return {"in_channels": hp.in_channels, "channels": list(hp.channels), "kernel": hp.kernel}

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()
