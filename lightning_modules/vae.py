"""Training the VAE whose decoder is INC's generator (paper 004, Sec. 4.1), and calibrating
INC's rejection threshold eta on held-out clean images."""

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from dipdefense.manifold.inversion import invert
from dipdefense.nets.vae import VAE


class VAEGenerator(pl.LightningModule):
    """Maximises the ELBO with a Bernoulli decoder (Kingma and Welling 2013; the paper's VAE):
    loss = BCE(x, G(z)) summed over pixels + KL(q(z|x) || N(0, I)), per image. Logs the
    negative ELBO, both terms and the reconstruction MSE of the posterior mean.

    Before testing it inverts ``calibration_images`` held-out validation images with INC's
    inversion and records the ``eta_quantile`` quantile of their distances ||G(z*) - x||_2
    as ``inversion_eta`` in the exported checkpoint: the default rejection threshold of
    ``--defense inc`` (rejects that share of clean images).

    Arguments:
        arch: "mlp" or "conv" (``nets.vae.VAE``). Default: "mlp".
        image_shape: Default: (1, 28, 28). latent_dim: Default: 20. hidden: Default: (500, 500).
        lr: Adam learning rate. Default: 1e-3.
        calibration_images: Default: 500. eta_quantile: Default: 0.95.
        inversion: ``manifold.inversion.invert`` arguments for the calibration (steps, lr,
            restarts). Default: {} (INC's defaults).
    """

    checkpoint_kind = "vae"

    def __init__(
        self,
        arch: str = "mlp",
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        lr: float = 1e-3,
        calibration_images: int = 500,
        eta_quantile: float = 0.95,
        inversion: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = VAE(arch, image_shape, latent_dim, hidden)
        self.inversion_eta: float | None = None

    def _losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mean, log_var = self.net(images)
        bce = F.binary_cross_entropy_with_logits(logits.float(), images.float(), reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
        return {"loss": (bce + kl).mean(), "bce": bce.mean(), "kl": kl.mean()}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch[0])
        self.log("train/neg_elbo", losses["loss"], prog_bar=True)
        return losses["loss"]

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images = batch[0]
        losses = self._losses(images)
        recon = self.net.decode(self.net.encode(images)[0])
        self.log(f"{stage}/neg_elbo", losses["loss"], prog_bar=True, sync_dist=True)
        self.log(f"{stage}/bce", losses["bce"], sync_dist=True)
        self.log(f"{stage}/kl", losses["kl"], sync_dist=True)
        self.log(f"{stage}/mse", (recon - images).pow(2).mean(), sync_dist=True)
        if stage == "test" and self.inversion_eta is not None:
            self.log("test/inversion_eta", self.inversion_eta, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        held_out = getattr(datamodule, "val_set", None)
        n = min(self.hparams.calibration_images, len(held_out) if held_out is not None else 0)
        if n == 0:
            return  # no validation split (e.g. testing only): the checkpoint gets no eta
        images = torch.stack([held_out[i][0] for i in range(n)]).to(self.device)
        with torch.inference_mode(False), torch.enable_grad():
            was_training = self.net.training
            self.net.eval()
            distances = invert(
                self.net.decode, images, self.hparams.latent_dim, indices=torch.arange(n), **self.inversion_kwargs()
            ).distance
            self.net.train(was_training)
        self.inversion_eta = float(distances.float().quantile(self.hparams.eta_quantile))

    def inversion_kwargs(self) -> dict[str, Any]:
        return dict(self.hparams.inversion or {})

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def checkpoint_config(self) -> dict[str, Any]:
        hp = self.hparams
        config = {"arch": hp.arch, "image_shape": list(hp.image_shape), "latent_dim": hp.latent_dim}
        config["hidden"] = list(hp.hidden)
        if self.inversion_eta is not None:
            config |= {
                "inversion_eta": self.inversion_eta,
                "eta_quantile": hp.eta_quantile,
                "eta_inversion": self.inversion_kwargs(),
            }
        return config

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()
