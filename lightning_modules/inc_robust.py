"""Adversarial training on a generator's manifold (paper 004, Sec. 2.3 and 4.3, Eq. 4/6/10)."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from dipdefense.common.checkpoint_io import resolve_repo_path
from dipdefense.common.seeding import item_seed
from dipdefense.manifold.minmax import initial_pairs, minmax_attack, output_gap
from dipdefense.nets import load_classifier, load_vae


class ManifoldAdversarialTraining(pl.LightningModule):
    """Trains C on Eq. 10:

        mu * sup_{z, z'} ||C(G(z)) - C(G(z'))||^2  +  (1 - mu) * CE(y, C(x)),
        s.t. ||G(z) - G(z')||^2 <= eta^2,

    the sup by ``inner_steps`` of the min-max attack (``manifold.minmax``) on fresh pairs at
    every step, with C frozen; then one optimiser step of C on the mixed loss, where the
    adversariality term is the final output gap of the valid pairs (the paper: "add the final
    l2 distance between the classification outputs to the cross-entropy loss"). Manual
    optimisation: the inner maximisation and the outer minimisation are two different games.
    The inner attack and the adversariality term see C in eval mode (BatchNorm's running
    statistics, no dropout), so generated pairs never enter the statistics of real images.

    Validation logs clean accuracy and the attack's figures on ``val_pairs`` fixed pairs
    after ``val_steps`` steps: valid share, mean KL and the share of different labels.

    Arguments:
        init_checkpoint: the classifier to robustify (a victim checkpoint).
            Default: "checkpoints/victim_fmnist_cnn.ckpt".
        generator: VAE checkpoint whose decoder is G. Default: "checkpoints/vae_fmnist.ckpt".
        mu: weight of the adversariality term. Default: 0.5.
        pairs: latent pairs attacked per step. Default: 32.
        inner_steps: min-max steps per training step. Default: 500 (the paper's).
        eta2_per_pixel, valid_per_pixel, inner_lr, inner_lr_middle, lr_penalty: the attack's
            settings (``manifold.minmax.minmax_attack``: 5e-5, 1.25e-4, 0.01, None, 1.0).
        init_spread: z' = z + init_spread * noise at the start. Default: 0.01.
        lr: Adam learning rate of C. Default: 1e-4.
        label_smoothing: of the cross-entropy. Default: 0.1 (the victim's recipe).
        val_pairs: Default: 128. val_steps: Default: 1000.
        seed: seeds the pairs (per step, so a resumed run draws the same ones). Default: 0.
    """

    checkpoint_kind = "victim"

    def __init__(
        self,
        init_checkpoint: str = "checkpoints/victim_fmnist_cnn.ckpt",
        generator: str = "checkpoints/vae_fmnist.ckpt",
        mu: float = 0.5,
        pairs: int = 32,
        inner_steps: int = 500,
        eta2_per_pixel: float = 5e-5,
        valid_per_pixel: float = 1.25e-4,
        inner_lr: float = 0.01,
        inner_lr_middle: float | None = None,
        lr_penalty: float = 1.0,
        init_spread: float = 0.01,
        lr: float = 1e-4,
        label_smoothing: float = 0.1,
        val_pairs: int = 128,
        val_steps: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= mu <= 1:
            raise ValueError(f"mu is a mixing weight in [0, 1], got {mu}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = load_classifier(resolve_repo_path(init_checkpoint)).train()
        self.vae = load_vae(resolve_repo_path(generator)).requires_grad_(False)
        num_classes = self.model.checkpoint_config.get("num_classes", 10)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _attack(self, num_pairs: int, steps: int, seed: int):
        hp = self.hparams
        self.vae.eval()  # Lightning's train() reaches it too; a conv VAE's BatchNorm must stay frozen
        z, z_prime = initial_pairs(num_pairs, self.vae.latent_dim, hp.init_spread, seed)
        return minmax_attack(
            self.vae.decode,
            self.model,
            z.to(self.device),
            z_prime.to(self.device),
            steps=steps,
            eta2_per_pixel=hp.eta2_per_pixel,
            lr=hp.inner_lr,
            lr_middle=hp.inner_lr_middle,
            lr_penalty=hp.lr_penalty,
            valid_per_pixel=hp.valid_per_pixel,
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        hp = self.hparams
        images, labels = batch
        optimizer = self.optimizers()
        self.model.eval()
        attack = self._attack(hp.pairs, hp.inner_steps, item_seed(hp.seed, self.global_step))
        valid = attack.stats["valid"]
        adversariality = images.new_zeros(())
        if valid.any():
            with torch.no_grad():
                x, x_prime = self.vae.decode(attack.z[valid]), self.vae.decode(attack.z_prime[valid])
            adversariality = output_gap(self.model, x, x_prime).mean()
        self.model.train()
        cross_entropy = F.cross_entropy(self.model(images), labels, label_smoothing=hp.label_smoothing)
        loss = hp.mu * adversariality + (1 - hp.mu) * cross_entropy
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        summary = attack.summary()
        self.log_dict(
            {
                "train/loss": loss,
                "train/cross_entropy": cross_entropy,
                "train/adversariality": adversariality,
                "train/valid_share": summary["valid_share"],
            },
            prog_bar=True,
        )

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        metric = getattr(self, f"{stage}_acc")
        metric(self.model(images), labels)
        self.log(f"{stage}/acc", metric, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.hparams.val_pairs == 0:
            return
        with torch.inference_mode(False), torch.enable_grad():
            summary = self._attack(self.hparams.val_pairs, self.hparams.val_steps, self.hparams.seed).summary()
        self.log_dict({f"val/minmax_{k}": float(v) for k, v in summary.items() if k != "pairs"})

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)

    def checkpoint_config(self) -> dict[str, Any]:
        """A victim checkpoint: ``nets.load_classifier`` and evaluate.py's --victim read it."""
        return dict(self.model.checkpoint_config)

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()
