import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from dipdefense.common.config_files import CONFIG_DIR, resolve_config_args
from dipdefense.common.errors import UserError
from dipdefense.nets import load_classifier
from tests.conftest import REPO

SHIPPED_CONFIGS = [
    "victim_cifar",
    "victim_cifar_fast",
    "victim_cifar_nols",
    "victim_cifar_resnet56",
    "victim_cifar_resnet50",
    "victim_cifar_vgg16",
    "victim_cifar_vit",
    "victim_fmnist",
    "victim_mnist",
]


def test_bare_config_names_resolve_against_configs_dir(tmp_path):
    assert resolve_config_args(["--config", "victim_cifar.yaml"]) == [
        "--config",
        str(CONFIG_DIR / "victim_cifar.yaml"),
    ]
    assert resolve_config_args(["--config=victim_fmnist"]) == ["--config=" + str(CONFIG_DIR / "victim_fmnist.yaml")]
    assert resolve_config_args(["-c", "victim_fmnist"]) == ["-c", str(CONFIG_DIR / "victim_fmnist.yaml")]
    own = tmp_path / "mine.yaml"
    own.write_text("seed_everything: 1\n")
    assert resolve_config_args(["--config", str(own), "--x", "1"]) == ["--config", str(own), "--x", "1"]
    with pytest.raises(UserError, match="config 'victim_svhn' is neither a file.*known configs: .*victim_cifar.yaml"):
        resolve_config_args(["--config", "victim_svhn"])


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_parse_and_build(name, tmp_path, monkeypatch):
    """Every shipped config instantiates its model and data module (no fitting)."""
    monkeypatch.chdir(tmp_path)
    cli = train.build_cli(["--config", name, "--trainer.logger", "false"], save_config=False)
    assert cli.model.hparams.arch and cli.datamodule.batch_size > 0


def test_the_progress_bar_is_tqdm_unless_the_config_says_otherwise(tmp_path, monkeypatch):
    """Lightning's default bar is Rich's whenever rich imports, and Rich writes nothing to a log
    file until the fit ends; train.py's default is tqdm's, a configured bar is kept, and
    enable_progress_bar false means none."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    monkeypatch.chdir(tmp_path)
    base = ["--config", "victim_cifar_quick", "--trainer.logger", "false"]
    cli = train.build_cli(base, save_config=False)
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar
    cli = train.build_cli([*base, "--trainer.callbacks+=RichProgressBar"], save_config=False)
    assert type(cli.trainer.progress_bar_callback) is RichProgressBar
    cli = train.build_cli([*base, "--trainer.enable_progress_bar", "false"], save_config=False)
    assert cli.trainer.progress_bar_callback is None


def test_one_epoch_fit_on_a_tiny_subset_exports_a_loadable_checkpoint(cifar_batches_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "victim.ckpt"
    train.main(
        [
            "--config", "victim_cifar_quick",
            "--data.data_dir", str(cifar_batches_dir),
            "--data.val_size", "20",
            "--data.batch_size", "16",
            "--data.eval_batch_size", "16",
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3",
            "--trainer.precision", "32-true",
            "--trainer.enable_progress_bar", "false",
            "--model.init_args.lr", "0.05",
            "--export", str(export),
        ]
    )  # fmt: skip
    model = load_classifier(export)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert 0.0 <= model.checkpoint_metrics["test/acc"] <= 1.0
    assert model.checkpoint_config["arch"] == "resnet20"
    assert (tmp_path / "logs" / "victim_cifar_quick").is_dir()

    def test_and_export(path: Path, *extra: str) -> None:
        """Test ``export`` without training (-c resolves like --config) and export it to ``path``."""
        train.main(
            [
                "-c", "victim_cifar_quick",
                "--data.data_dir", str(cifar_batches_dir),
                "--data.val_size", "20",
                "--data.eval_batch_size", "16",
                "--trainer.precision", "32-true",
                "--trainer.enable_progress_bar", "false",
                "--fit", "false",
                "--weights", str(export),
                "--export", str(path),
                *extra,
            ]
        )  # fmt: skip

    tested = tmp_path / "tested.ckpt"
    test_and_export(tested)
    again = load_classifier(tested)
    assert again.checkpoint_metrics["test/acc"] == model.checkpoint_metrics["test/acc"]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))
    with pytest.raises(UserError, match="--fit false .* give --weights PATH"):
        train.main(["-c", "victim_cifar_quick", "--data.data_dir", str(cifar_batches_dir), "--fit", "false"])

    # Re-exported at half precision: half the file, the float32 model within float16's rounding.
    half = tmp_path / "half.ckpt"
    test_and_export(half, "--export_dtype", "float16")
    stored = torch.load(half, weights_only=True)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert {v.dtype for k, v in stored.items() if k.endswith("num_batches_tracked")} == {torch.long}
    assert half.stat().st_size < 0.6 * export.stat().st_size
    loaded = load_classifier(half)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values() if v.is_floating_point())
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=0.05)
    with pytest.raises(SystemExit):
        train.build_cli(["-c", "victim_cifar_quick", "--export_dtype", "int8"], save_config=False)


def test_resume_continues_an_interrupted_fit_at_the_next_epoch(cifar_batches_dir, tmp_path, monkeypatch):
    """A fit interrupted in its third epoch, resumed with --resume from the shipped callbacks'
    last.ckpt: the resumed run trains only the epoch left, on the same one-cycle schedule. The
    monitored checkpoint improves only in epoch 0 here, and last.ckpt must still hold epoch 1
    (Lightning 2.6's own save_last writes only when a monitored checkpoint is saved)."""
    from lightning_modules import VictimClassifier

    monkeypatch.chdir(tmp_path)
    callbacks = yaml.safe_load((CONFIG_DIR / "victim_cifar.yaml").read_text())["trainer"]["callbacks"]
    best = next(c for c in callbacks if c["init_args"].get("monitor"))
    best["init_args"].update(monitor="step", mode="min")  # never improves after epoch 0
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    common = [
        "--config", "victim_cifar_quick",
        "--config", str(overlay),
        "--data.data_dir", str(cifar_batches_dir),
        "--data.val_size", "20",
        "--data.batch_size", "16",
        "--data.eval_batch_size", "16",
        "--trainer.max_epochs", "3",
        "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1",
        "--trainer.precision", "32-true",
        "--trainer.enable_progress_bar", "false",
        "--test", "false",
    ]  # fmt: skip

    def interrupt_in_third_epoch(self, batch, batch_idx):
        if self.current_epoch == 2:
            raise KeyboardInterrupt  # what a killed session leaves: the checkpoints of epochs 0-1

    with monkeypatch.context() as patch:
        patch.setattr(VictimClassifier, "on_train_batch_start", interrupt_in_third_epoch, raising=False)
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            train.main(common)
    runs = tmp_path / "logs" / "victim_cifar_quick" / "csv"
    saved = {
        p.name: torch.load(p, weights_only=True)["global_step"]
        for p in (runs / "version_0" / "checkpoints").glob("*.ckpt")
    }
    assert saved == {"best-epoch=00.ckpt": 4, "last.ckpt": 8}
    first = runs / "version_0" / "checkpoints" / "last.ckpt"

    train.main([*common, "--resume", str(first)])
    with open(runs / "version_1" / "metrics.csv", newline="") as metrics:
        assert {row["epoch"] for row in csv.DictReader(metrics) if row["epoch"]} == {"2"}  # (lr rows have none)

    with pytest.raises(UserError, match="--resume .*missing.ckpt: no such file"):
        train.main([*common, "--resume", str(tmp_path / "missing.ckpt")])
    with pytest.raises(UserError, match="either --resume or --weights"):
        train.main([*common, "--resume", str(first), "--weights", str(first)])


def test_bad_data_dir_is_one_line_on_stderr(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            "victim_cifar_quick",
            "--data.data_dir",
            str(tmp_path / "missing"),
            "--trainer.logger",
            "false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CIFAR-10 not found at") and str(tmp_path / "missing") in last


def test_unknown_config_is_one_line_on_stderr(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: config 'nope'")


def test_init_checkpoint_starts_from_exported_weights(tmp_path):
    from dipdefense.common.checkpoint_io import save_checkpoint
    from dipdefense.common.errors import CheckpointError
    from dipdefense.nets import build_classifier
    from lightning_modules import VictimClassifier

    config = {"arch": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 32, "mean": "cifar10", "std": None}
    torch.manual_seed(1)
    source = build_classifier(**config).eval()
    save_checkpoint(tmp_path / "v.ckpt", "victim", config, source.state_dict())
    module = VictimClassifier(init_checkpoint=str(tmp_path / "v.ckpt")).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(module(x), source(x))
    with pytest.raises(CheckpointError, match="weights do not fit architecture 'resnet32'"):
        VictimClassifier(arch="resnet32", init_checkpoint=str(tmp_path / "v.ckpt"))


def test_train_download_flag_reaches_the_data_sets_fetch_with_the_data_dir(idx_dir, tmp_path, monkeypatch):
    """No network here: torchvision's class is replaced by one that lays the IDX files down
    when asked to download, and reads them as torchvision does otherwise."""
    import gzip

    from datamodules import FashionMNISTDataModule

    real, calls = FashionMNISTDataModule.dataset_cls, []

    def fake(root, train=True, download=False):
        calls.append((root, train, download))
        if download:
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for packed in idx_dir.glob("*.gz"):
                (raw / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
        return real(root, train=train, download=False)

    monkeypatch.setattr(FashionMNISTDataModule, "dataset_cls", staticmethod(fake))
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    args = ["-c", "victim_fmnist", "--data.data_dir", str(empty), "--data.val_size", "10", "--trainer.logger", "false"]
    cli = train.build_cli([*args, "--data.init_args.download", "true"], save_config=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("test")
    assert calls[0] == (str(empty), True, True) and len(cli.datamodule.test_set) == 20


def test_bf16_on_a_cpu_without_bf16_units_is_warned_of(monkeypatch, capsys):
    from lightning_modules import train_cli

    base = ["-c", "victim_cifar_quick", "--trainer.accelerator", "cpu"]
    monkeypatch.setattr(train_cli, "cpu_has_native_bf16", lambda: False)
    train_cli.warn_of_emulated_bf16(
        train.build_cli([*base, "--trainer.precision", "bf16-mixed"], save_config=False).trainer
    )
    assert "without bfloat16 units" in capsys.readouterr().err
    train_cli.warn_of_emulated_bf16(
        train.build_cli([*base, "--trainer.precision", "32-true"], save_config=False).trainer
    )
    monkeypatch.setattr(train_cli, "cpu_has_native_bf16", lambda: True)
    train_cli.warn_of_emulated_bf16(
        train.build_cli([*base, "--trainer.precision", "bf16-mixed"], save_config=False).trainer
    )
    assert capsys.readouterr().err == ""
