"""Train anything that has a config: ``python train.py --config victim_cifar.yaml``.

Bare config names resolve against ``configs/``; every value can be overridden on the
command line (``--trainer.max_epochs 5``, ``--data.data_dir /data/cifar``). After
fitting, the best checkpoint is tested and, with ``--export PATH``, written as a compact
weights-only checkpoint that evaluate.py and ``nets.load_classifier`` read.
"""

import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from common.checkpoint_io import save_checkpoint
from common.config_files import resolve_config_args
from common.errors import UserError, run_main


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--export", type=str | None, default=None, help="write the best weights here as a compact checkpoint"
        )
        parser.add_argument("--test", type=bool, default=True, help="test the best checkpoint after fitting")


def build_cli(argv: list[str], save_config: bool = True) -> TrainCLI:
    """Parse ``argv`` (config names resolved) and instantiate trainer, model and data."""
    return TrainCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=resolve_config_args(argv),
        save_config_callback=SaveConfigCallback if save_config else None,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> None:
    cli = build_cli(sys.argv[1:] if argv is None else argv)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data)
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None and callback.best_model_path else None
    if best:
        # Restore the best epoch's weights for both testing and export.
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    metrics: dict[str, float] = {}
    if cli.config.test:
        results = trainer.test(model, datamodule=data)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if cli.config.export and trainer.is_global_zero:
        if not hasattr(model, "checkpoint_config"):
            raise UserError(f"{type(model).__name__} cannot be exported (no checkpoint_config)")
        path = save_checkpoint(
            cli.config.export, model.checkpoint_kind, model.checkpoint_config(), model.exported_state_dict(), metrics
        )
        print(f"exported {model.checkpoint_kind} checkpoint to {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_main(main)
