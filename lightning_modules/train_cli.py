"""Train anything that has a config: ``python train.py --config victim_cifar.yaml`` (or ``dipdef-train``).

Bare config names resolve against ``configs/``; every value can be overridden on the
command line (``--trainer.max_epochs 5``, ``--data.data_dir /data/cifar``). After
fitting, the best checkpoint is tested and, with ``--export PATH``, written as a compact
weights-only checkpoint that evaluate.py and ``nets.load_classifier`` read (``--export_dtype
float16`` stores its floating-point tensors at half the size).

Test a checkpoint without training: ``--fit false --weights PATH`` (an export of train.py or
a Lightning ``.ckpt`` of the same model), e.g.
``python train.py -c victim_cifar --fit false --weights checkpoints/victim_cifar_resnet20.ckpt``.

Continue an interrupted fit (a long schedule across sessions) with ``--resume
logs/<run>/csv/version_N/checkpoints/last.ckpt`` and the same config.
"""

import sys
import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from dipdefense.common.checkpoint_io import load_checkpoint, load_state_dict_strict, save_checkpoint
from dipdefense.common.config_files import resolve_config_args
from dipdefense.common.errors import CheckpointError, UserError, run_main

from .config_classes import datamodules_package


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--export", type=str | None, default=None, help="write the best weights here as a compact checkpoint"
        )
        parser.add_argument(
            "--export_dtype",
            type=Literal["float32", "float16", "bfloat16"],
            default="float32",
            help="store the export's floating-point tensors in this type (float16 halves a large "
            "victim's file; they load into the float32 model); integer tensors are kept",
        )
        parser.add_argument("--test", type=bool, default=True, help="test the best checkpoint after fitting")
        parser.add_argument("--fit", type=bool, default=True, help="fit the model (false: only test --weights)")
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="continue an interrupted fit from a Lightning .ckpt of this run (e.g. its last.ckpt): "
            "weights, optimizer, schedule and epoch",
        )
        parser.add_argument(
            "--weights",
            type=str | None,
            default=None,
            help="start from these weights: an export of train.py or a Lightning .ckpt of the same model",
        )

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        # Lightning picks its Rich bar whenever `rich` imports (import-linter brings it into the
        # dev venv), and Rich prints nothing to a log file until the fit ends; tqdm's bar shows
        # steps and s/it in `nohup ... > log` too, the same with or without the dev tools.
        trainer_config = self._get(self.config_init, "trainer", default={})
        listed = trainer_config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        wants_bar = trainer_config.get("enable_progress_bar") is not False
        if wants_bar and "callbacks" not in kwargs and not any(isinstance(c, ProgressBar) for c in listed):
            kwargs["callbacks"] = [*listed, TQDMProgressBar()]
        return super().instantiate_trainer(**kwargs)


def load_weights(model: pl.LightningModule, path: str) -> None:
    """Load an export of train.py (the inner network's weights) or a Lightning ``.ckpt`` (the
    whole module's) into ``model``; a file that fits neither is one clear error."""
    kind = getattr(model, "checkpoint_kind", None)
    if kind is None:
        raise UserError(f"--weights: {type(model).__name__} has no checkpoint kind, so it cannot load {path}")
    ckpt = load_checkpoint(path, kind=kind)
    state = ckpt["state_dict"]
    if ckpt.get("lightning"):
        load_state_dict_strict(model, state, path, type(model).__name__)
        return
    for name, child in model.named_children():
        if set(child.state_dict()) == set(state):
            load_state_dict_strict(child, state, path, f"{type(model).__name__}.{name}")
            return
    raise CheckpointError(f"--weights {path}: its weights fit no part of {type(model).__name__}")


def build_cli(argv: list[str], save_config: bool = True) -> TrainCLI:
    """Parse ``argv`` (config names resolved) and instantiate trainer, model and data."""
    with warnings.catch_warnings():
        # LightningCLI warns whenever args= is given while sys.argv has arguments: here args= is
        # sys.argv itself, with bare config names resolved.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _build_cli(argv, save_config)


def _build_cli(argv: list[str], save_config: bool) -> TrainCLI:
    datamodules_package()  # configs name its classes by their bare names (config_classes.py)
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); without either,
    oneDNN emulates it and bf16 autocast can be slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def warn_of_emulated_bf16(trainer: pl.Trainer) -> None:
    bf16 = "bf16" in str(trainer.precision)
    if bf16 and isinstance(trainer.accelerator, CPUAccelerator) and not cpu_has_native_bf16():
        print(
            f"warning: --trainer.precision {trainer.precision} on a CPU without bfloat16 units (no AVX512-BF16 "
            "or AMX): oneDNN emulates it, which can be slower than --trainer.precision 32-true",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    cli = build_cli(sys.argv[1:] if argv is None else argv)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    warn_of_emulated_bf16(trainer)
    if cli.config.weights:
        load_weights(model, cli.config.weights)
    elif not cli.config.fit:
        raise UserError("--fit false tests the model as it is built: give --weights PATH (a checkpoint to test)")
    resume = cli.config.resume
    if resume is not None:
        if not cli.config.fit:
            raise UserError("--resume continues a fit: drop --fit false, or test a checkpoint with --weights PATH")
        if cli.config.weights:
            raise UserError("--resume restores the run's own weights: give either --resume or --weights, not both")
        if not Path(resume).is_file():
            raise UserError(
                f"--resume {resume}: no such file (give a Lightning .ckpt, e.g. <run>/checkpoints/last.ckpt)"
            )
    best = None
    if cli.config.fit:
        # The schedule, optimizer and epoch counter come back too, so a fit split across sessions
        # follows the same one-cycle schedule as one run; weights_only: a .ckpt is tensors and plain data.
        trainer.fit(model, datamodule=data, ckpt_path=resume, weights_only=True)
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
            cli.config.export,
            model.checkpoint_kind,
            model.checkpoint_config(),
            model.exported_state_dict(),
            metrics,
            dtype=getattr(torch, cli.config.export_dtype),
        )
        print(f"exported {model.checkpoint_kind} checkpoint to {path} ({path.stat().st_size / 1e6:.2f} MB)")


def entry() -> None:
    """The ``dipdef-train`` console script."""
    run_main(main)
