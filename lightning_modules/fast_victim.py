"""airbench's training recipe (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
arXiv 2404.00498, Sec. 3) as a victim classifier's LightningModule.

What it adds to :class:`VictimClassifier`: the whitening layer set from training patches before the
first step (Sec. 3.2) and its bias trained for three epochs only; Nesterov SGD with the paper's
decoupled hyperparameters (lr and weight decay per 1024 examples, independent of the momentum) and a
64x learning rate for the BatchNorm shifts; label smoothing 0.2; a triangular schedule over 9.9
epochs; and Lookahead (Zhang et al. 2019) by an exponential moving average copied back into the
network every 5 steps from epoch 3, its decay warming up as (step / total)^3 (Sec. 3.5).
The flips and translations are the data module's (``flip_mode: alternating``,
``crop_padding_mode: reflect``, ``crop_padding: 2``); the test-time augmentation is the network's
(``arch_options: {tta_level: 2}``).

Lightning's WeightAveraging / StochasticWeightAveraging callbacks keep a separate averaged model
and swap it in at the end; Lookahead writes the average back into the network being trained, which
changes the training trajectory, so it lives here.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .victim import VictimClassifier


def triangular_schedule(step: int, total: int, start: float, peak_at: float, end: float) -> float:
    """Learning-rate multiplier: linear from ``start`` to 1 at ``peak_at`` of the steps, then to ``end``."""
    peak = int(peak_at * total)
    if step <= peak:
        return start + (1 - start) * step / max(peak, 1)
    return 1 + (end - 1) * min(step - peak, total - peak) / max(total - peak, 1)


class FastVictimClassifier(VictimClassifier):
    """A victim trained with airbench94's recipe (Jordan 2024, Sec. 3); the paper's values are the defaults.

    Arguments (beyond :class:`VictimClassifier`'s architecture arguments):
        arch: Default: "airbench94".
        lr: learning rate per 1024 examples, decoupled from the momentum (paper: 11.5). Default: 11.5.
        momentum: Nesterov momentum. Default: 0.85.
        weight_decay: weight decay per 1024 examples, decoupled from the learning rate. Default: 0.0153.
        bias_scaler: learning-rate multiplier of the BatchNorm shifts. Default: 64.
        label_smoothing: Default: 0.2.
        train_epochs: length of the schedule in epochs; the trainer's max_epochs must cover it. Default: 9.9.
        lr_start, lr_peak_at, lr_end: the triangular schedule (multipliers and the peak's share of
            the steps). Defaults: 0.2, 0.23, 0.07.
        lookahead_start_epoch: first epoch of the Lookahead average. Default: 3.
        lookahead_every: steps between averages. Default: 5.
        lookahead_decay: per-step decay base. Default: 0.95.
        lookahead_power: warm-up exponent of the decay. Default: 3.
        whiten_bias_epochs: epochs the whitening layer's bias trains. Default: 3.
        whitening_images: training images whose patches set the whitening layer. Default: 5000.
        channels_last: Default: True.
    """

    def __init__(
        self,
        arch: str = "airbench94",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        mean: Any = "cifar10",
        std: Any = None,
        arch_options: dict[str, Any] | None = None,
        lr: float = 11.5,
        momentum: float = 0.85,
        weight_decay: float = 0.0153,
        bias_scaler: float = 64.0,
        label_smoothing: float = 0.2,
        train_epochs: float = 9.9,
        lr_start: float = 0.2,
        lr_peak_at: float = 0.23,
        lr_end: float = 0.07,
        lookahead_start_epoch: int = 3,
        lookahead_every: int = 5,
        lookahead_decay: float = 0.95,
        lookahead_power: float = 3.0,
        whiten_bias_epochs: int = 3,
        whitening_images: int = 5000,
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            mean=mean,
            std=std,
            arch_options=arch_options,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            scheduler="none",
            label_smoothing=label_smoothing,
            channels_last=channels_last,
        )
        self.save_hyperparameters()
        if not hasattr(self.network, "init_whitening"):
            raise ValueError(f"arch {arch!r} has no whitening layer; FastVictimClassifier trains: airbench94")
        self._lookahead: dict[str, torch.Tensor] | None = None
        self._total_steps = 0

    @property
    def network(self) -> nn.Module:
        return self.model[1]

    @property
    def _bias(self) -> torch.Tensor:
        return self.network.whiten.bias

    def setup(self, stage: str) -> None:
        # Runs before a resumed fit restores its checkpoint, which then overwrites these filters.
        if stage != "fit":
            return
        train_set = self.trainer.datamodule.train_set
        count = min(self.hparams.whitening_images, len(train_set))
        images = torch.stack([train_set[i][0] for i in range(count)])
        self.network.init_whitening(self.model[0](images))

    def _sgd_groups(self) -> list[dict[str, Any]]:
        hp = self.hparams
        batch_size = self.trainer.datamodule.batch_size
        # Paper Sec. 3.4: the loss is summed over the batch and lr / wd are per 1024 examples;
        # dividing by 1 + 1/(1 - momentum) makes the step size independent of the momentum.
        kilostep_scale = 1024 * (1 + 1 / (1 - hp.momentum))
        lr = hp.lr / kilostep_scale
        decay = hp.weight_decay * batch_size / kilostep_scale
        norm_shifts = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d) and m.bias.requires_grad]
        shift_ids = {id(p) for p in norm_shifts}
        # The whitening bias is among the others even after it stops training (a resumed fit's
        # optimizer state must see the same groups); frozen weights are left out.
        others = [p for p in self.parameters() if id(p) not in shift_ids and (p.requires_grad or p is self._bias)]
        lr_shifts = lr * hp.bias_scaler
        return [
            {"params": norm_shifts, "lr": lr_shifts, "weight_decay": decay / lr_shifts},
            {"params": others, "lr": lr, "weight_decay": decay / lr},
        ]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < math.ceil(hp.train_epochs):
            raise ValueError(f"trainer.max_epochs={max_epochs} is shorter than train_epochs={hp.train_epochs}")
        steps_per_epoch = self.trainer.estimated_stepping_batches / max_epochs
        self._total_steps = math.ceil(steps_per_epoch * hp.train_epochs)
        optimizer = torch.optim.SGD(self._sgd_groups(), momentum=hp.momentum, nesterov=True)
        total = self._total_steps

        def multiplier(step: int) -> float:
            return triangular_schedule(step, total, hp.lr_start, hp.lr_peak_at, hp.lr_end)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        self.network.whiten.bias.requires_grad_(self.current_epoch < self.hparams.whiten_bias_epochs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self._total_steps and self.global_step >= self._total_steps:
            return -1  # the schedule ends inside the last epoch: skip its remaining batches
        return None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing, reduction="sum")
        self.train_acc(logits, labels)
        self.log("train/loss", loss / len(images), prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    @torch.no_grad()
    def _lookahead_update(self, decay: float) -> None:
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point():
                average = self._lookahead[name]
                average.lerp_(tensor, 1 - decay)
                tensor.copy_(average)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        step = self.global_step
        if self.current_epoch < hp.lookahead_start_epoch or step % hp.lookahead_every:
            return
        if self._lookahead is None:
            self._lookahead = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return
        decay = hp.lookahead_decay**hp.lookahead_every * (step / self._total_steps) ** hp.lookahead_power
        self._lookahead_update(decay)

    def on_train_epoch_end(self) -> None:
        if self._lookahead is not None:
            self._lookahead_update(1.0)  # the network ends each epoch at the average

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lookahead"] = self._lookahead

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._lookahead = checkpoint.get("lookahead")
