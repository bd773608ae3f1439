import json

import pytest
import torch
import yaml

import evaluate
import train
from datamodules import AdversarialDetectionDataModule
from dipdefense.defenses import build_defense
from dipdefense.nets import load_glow_detector


@pytest.fixture
def tiny_glow(cifar_batches_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "glow.ckpt"
    train.main(
        [
            "--config", "glow_cifar", "--data.data_dir", str(cifar_batches_dir), "--data.val_size", "20",
            "--data.batch_size", "16", "--data.eval_batch_size", "16", "--model.init_args.steps", "1",
            "--model.init_args.hidden_channels", "8", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--test", "false", "--export", str(path),
        ]
    )  # fmt: skip
    return path


def test_balanced_sets_hold_each_image_clean_and_attacked_once(tiny_victim, cifar_batches_dir):
    dm = AdversarialDetectionDataModule(
        victim=str(tiny_victim), attacks="fgsm,pgd", eps="0.02", attack_params={"pgd": {"steps": 2}},
        num_train=12, num_val=6, holdout=20, data_dir=str(cifar_batches_dir), chunk_size=5,
    )  # fmt: skip
    dm.setup("fit")
    images, targets = dm.sets["train"].tensors
    assert len(images) == 24 and targets.sum() == 12 and torch.equal(targets[:12], torch.zeros(12))
    clean, attacked = images[:12], images[12:]
    assert (attacked - clean).abs().amax() <= 0.02 + 1e-6 and (attacked != clean).any()
    assert len(dm.sets["val"].tensors[0]) == 12
    with pytest.raises(ValueError, match="num_train <="):
        AdversarialDetectionDataModule(
            victim=str(tiny_victim), num_train=500, holdout=20, data_dir=str(cifar_batches_dir)
        ).setup("fit")


def test_detector_trains_exports_and_reports_detection(tiny_victim, tiny_glow, cifar_batches_dir, tmp_path):
    export = tmp_path / "detector.ckpt"
    train.main(
        [
            "--config", "glow_detector_cifar", "--model.init_args.glow_checkpoint", str(tiny_glow),
            "--model.init_args.hidden", "[32,16,16,8]", "--data.victim", str(tiny_victim),
            "--data.attacks", "fgsm", "--data.num_train", "16", "--data.num_val", "8", "--data.holdout", "20",
            "--data.data_dir", str(cifar_batches_dir), "--data.chunk_size", "8", "--trainer.max_epochs", "2",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--export", str(export),
        ]
    )  # fmt: skip
    net = load_glow_detector(export)
    assert net.checkpoint_config["hidden"] == [32, 16, 16, 8] and "test/auroc" in net.checkpoint_metrics
    gate = build_defense("glow_gate", checkpoint=str(export), threshold=0.5)
    scores = gate.score(torch.rand(3, 3, 32, 32))
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()

    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"defense_params": {"glow_gate": {"checkpoint": str(export)}}}))
    out = tmp_path / "run"
    evaluate.main(
        [
            "--config", str(config), "--defense", "glow_gate", "--attacks", "clean,fgsm", "--eps", "0.02",
            "--num-samples", "10", "--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir),
            "--out", str(out), "--batch-size", "5",
        ]
    )  # fmt: skip
    (row,) = json.loads((out / "results.json").read_text())["detection"]
    assert row["n_pairs"] == 10 and 0 <= row["tpr"] <= 1
    with pytest.raises(ValueError, match="threshold is a probability"):
        build_defense("glow_gate", checkpoint=str(export), threshold=2)
