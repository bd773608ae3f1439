"""Paper 004: the VAE generator, INC's inversion and rejection, the min-max attack and
robust training on the generator manifold."""

import json

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import evaluate
from dipdefense.common.checkpoint_io import save_checkpoint
from dipdefense.common.errors import UserError
from dipdefense.defenses import build_defense
from dipdefense.manifold import initial_pairs, invert, minmax_attack, output_gap, pair_statistics, summarise_pairs
from dipdefense.nets import build_classifier, load_classifier, load_vae
from dipdefense.nets.vae import VAE

FMNIST_VICTIM = {"arch": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 28, "mean": "fashion_mnist"}
TINY_VAE = {"arch": "mlp", "image_shape": [1, 28, 28], "latent_dim": 4, "hidden": [32, 32]}


class LinearGenerator(nn.Module):
    """G(z) = A z + b shaped as an image: inversion is least squares, with a known answer."""

    def __init__(self, latent_dim: int = 3, shape=(1, 4, 4), seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pixels = shape[0] * shape[1] * shape[2]
        self.A = torch.randn(pixels, latent_dim, generator=g) / latent_dim**0.5
        self.b = 0.5 + 0.1 * torch.randn(pixels, generator=g)
        self.shape, self.latent_dim = shape, latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.A.T + self.b).view(len(z), *self.shape)


@pytest.fixture
def tiny_vae(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vae.ckpt"
    save_checkpoint(path, "vae", {**TINY_VAE, "inversion_eta": 1.0}, VAE(**TINY_VAE).state_dict())
    return path


@pytest.fixture
def fmnist_victim(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "victim.ckpt"
    save_checkpoint(path, "victim", FMNIST_VICTIM, build_classifier(**FMNIST_VICTIM).state_dict())
    return path


def test_vae_shapes_and_bad_settings():
    vae = VAE()  # paper 004: 784 -> 500 -> 500 -> 20, and back
    z = torch.randn(3, 20)
    x = vae.decode(z)
    assert x.shape == (3, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    logits, mean, log_var = vae(x)
    assert logits.shape == x.shape and mean.shape == log_var.shape == (3, 20)
    assert [m.out_features for m in vae.encoder if isinstance(m, nn.Linear)] == [500, 500]
    conv = VAE("conv", (3, 32, 32), 64, (32, 64, 128))
    assert conv.decode(torch.randn(2, 64)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown VAE arch 'gan'; accepted: mlp, conv"):
        VAE("gan")
    with pytest.raises(ValueError, match="divisible"):
        VAE("conv", (3, 30, 30), 16, (8, 8))


def test_inversion_recovers_the_latent_of_a_generated_image():
    g = LinearGenerator()
    z0 = torch.tensor([[0.5, -1.0, 0.3], [1.2, 0.1, -0.7]])
    result = invert(g, g(z0), latent_dim=3, steps=800, lr=0.05, restarts=2)
    assert torch.allclose(result.z, z0, atol=1e-3)
    assert (result.distance < 1e-3).all()
    vae = VAE(**{**TINY_VAE, "image_shape": (1, 28, 28)}).eval()
    with torch.no_grad():
        target = vae.decode(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    result = invert(vae.decode, target, latent_dim=4, steps=400, lr=0.1, restarts=3)
    assert (result.distance < 0.05).all(), result.distance  # ||x|| is about 14


def test_inversion_is_per_image_whatever_the_batch():
    g = LinearGenerator(seed=1)
    x = torch.rand(5, 1, 4, 4)
    batch = invert(g, x, 3, steps=50, lr=0.05, restarts=3, indices=torch.arange(10, 15), seed=7)
    alone = invert(g, x[2:3], 3, steps=50, lr=0.05, restarts=3, indices=torch.tensor([12]), seed=7)
    assert torch.allclose(batch.z[2], alone.z[0], atol=1e-6)
    with pytest.raises(ValueError, match="z_init must be"):
        invert(g, x, 3, z_init=torch.zeros(5, 2, 3), restarts=3)


def test_inc_rejects_off_manifold_inputs_and_reports_it(tiny_vae, fmnist_victim):
    inc = build_defense("inc", generator=str(tiny_vae), steps=300, restarts=2)
    assert inc.eta == 1.0  # from the checkpoint
    vae = load_vae(tiny_vae)
    with torch.no_grad():
        on_manifold = vae.decode(torch.randn(2, 4, generator=torch.Generator().manual_seed(3)))
    checkerboard = (torch.arange(28)[:, None] + torch.arange(28)[None]).remainder(2).float().expand(2, 1, 28, 28)
    images = torch.cat([on_manifold, checkerboard])
    out, details, _ = inc.purify_detailed(images, load_classifier(fmnist_victim), torch.arange(4))
    assert out.shape == images.shape
    assert [d["rejected"] for d in details] == [False, False, True, True]
    assert details[2]["inversion_distance"] > 5  # a checkerboard is ~14 from a smooth image


def test_inc_refuses_bad_settings(tmp_path, tiny_vae):
    no_eta = tmp_path / "no_eta.ckpt"
    save_checkpoint(no_eta, "vae", TINY_VAE, VAE(**TINY_VAE).state_dict())
    with pytest.raises(UserError, match="no calibrated inversion_eta; give eta"):
        build_defense("inc", generator=str(no_eta))
    assert build_defense("inc", generator=str(no_eta), eta=float("inf")).params()["eta"] == "inf"
    with pytest.raises(UserError, match="restarts must be an integer >= 1"):
        build_defense("inc", generator=str(tiny_vae), restarts=0)
    with pytest.raises(UserError, match=r"makes \(1, 28, 28\) images, the inputs are \(3, 32, 32\)"):
        build_defense("inc", generator=str(tiny_vae)).purify(torch.rand(1, 3, 32, 32), nn.Identity(), torch.zeros(1))


class LinearClassifier(nn.Module):
    def __init__(self, pixels: int = 16, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(pixels, classes)
        with torch.no_grad():
            self.fc.weight.mul_(20)  # a sharp classifier: close images, far outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_minmax_attack_keeps_the_constraint_and_widens_the_gap():
    g, c = LinearGenerator(), LinearClassifier()
    z, z_prime = initial_pairs(64, 3, init_spread=0.01, seed=0)
    before = pair_statistics(g, c, z, z_prime)
    settings = {"eta2_per_pixel": 1e-3, "valid_per_pixel": 2.5e-3, "lr": 0.01, "lr_penalty": 1.0}
    result = minmax_attack(g, c, z, z_prime, steps=1500, log_every=500, **settings)
    stats = result.stats
    # The multiplier holds every pair within the validity bound (2.5 eta^2, as the paper's),
    # and the pairs that found a boundary (a wide gap) sit on the constraint, oscillating
    # about eta^2 = 1e-3 per pixel as a Lagrangian game does.
    assert result.summary()["valid_share"] == 1.0
    assert result.summary()["different_share"] >= 0.5
    active = stats["gap"] > 0.02
    on_constraint = (stats["mean_sq"][active] > 0.5e-3) & (stats["mean_sq"][active] < 2.5e-3)
    assert active.sum() >= 8 and on_constraint.all(), stats["mean_sq"][active]
    assert stats["gap"].mean() > 5 * before["gap"].mean()
    assert (result.penalty >= 0).all() and len(result.history) == 3
    # Unconstrained (eta huge) the pairs drift apart far beyond eta.
    loose = minmax_attack(g, c, z, z_prime, steps=300, eta2_per_pixel=1e3, lr=0.01)
    assert loose.stats["mean_sq"].median() > 1e-3


def test_pair_summary_on_a_known_case():
    stats = {
        "valid": torch.tensor([True, True, False, True]),
        "kl": torch.tensor([1.0, 3.0, 100.0, 2.0]),
        "different": torch.tensor([True, False, True, False]),
        "gap": torch.tensor([0.5, 0.1, 1.0, 0.3]),
    }
    s = summarise_pairs(stats)
    assert s == {
        "pairs": 4,
        "valid_share": 0.75,
        "mean_kl": 2.0,
        "different_share": pytest.approx(1 / 3),
        "mean_gap": pytest.approx(0.3),
    }


def test_robust_training_step_reduces_the_adversariality_on_a_toy_problem():
    g, c = LinearGenerator(), LinearClassifier()
    optimizer = torch.optim.Adam(c.parameters(), lr=0.05)
    x = g(torch.randn(64, 3, generator=torch.Generator().manual_seed(5)))
    labels = c(x).argmax(1)

    settings = {"eta2_per_pixel": 1e-3, "valid_per_pixel": 2.5e-3}

    def attack_gap(seed: int) -> float:
        z, z_prime = initial_pairs(32, 3, 0.01, seed)
        return float(minmax_attack(g, c, z, z_prime, steps=300, **settings).stats["gap"].mean())

    before = attack_gap(100)
    for step in range(30):  # Eq. 10 with mu = 0.9
        z, z_prime = initial_pairs(32, 3, 0.01, step)
        attack = minmax_attack(g, c, z, z_prime, steps=100, **settings)
        adversariality = output_gap(c, g(attack.z), g(attack.z_prime)).mean()
        loss = 0.9 * adversariality + 0.1 * nn.functional.cross_entropy(c(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = attack_gap(100)
    assert after < 0.5 * before, (before, after)
    assert (c(x).argmax(1) == labels).float().mean() >= 0.9  # the cross-entropy keeps the labels


def test_manifold_adversarial_training_module_trains_and_exports_a_victim(
    tiny_vae, fmnist_victim, idx_dir, tmp_path, monkeypatch
):
    from datamodules import FashionMNISTDataModule
    from lightning_modules.inc_robust import ManifoldAdversarialTraining

    module = ManifoldAdversarialTraining(
        str(fmnist_victim), str(tiny_vae), pairs=4, inner_steps=5, val_pairs=4, val_steps=5, lr=1e-3
    )
    data = FashionMNISTDataModule(data_dir=str(idx_dir), batch_size=10, val_size=20, augment=False)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    start = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, datamodule=data)
    logged = trainer.callback_metrics
    assert {"train/adversariality", "train/cross_entropy", "val/acc", "val/minmax_valid_share"} <= set(logged)
    assert any(not torch.equal(start[k], v) for k, v in module.model.state_dict().items())
    assert all(not p.requires_grad for p in module.vae.parameters())
    path = save_checkpoint(
        tmp_path / "robust.ckpt", module.checkpoint_kind, module.checkpoint_config(), module.exported_state_dict()
    )
    assert load_classifier(path).checkpoint_config["arch"] == "small_cnn"


def test_vae_module_calibrates_eta_for_inc(idx_dir):
    from datamodules import FashionMNISTDataModule
    from lightning_modules.vae import VAEGenerator

    module = VAEGenerator(latent_dim=4, hidden=(32, 32), calibration_images=8, inversion={"steps": 5, "restarts": 1})
    data = FashionMNISTDataModule(data_dir=str(idx_dir), batch_size=10, val_size=20, augment=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    assert {"test/neg_elbo", "test/bce", "test/kl", "test/mse", "test/inversion_eta"} <= set(metrics)
    config = module.checkpoint_config()
    assert config["inversion_eta"] == pytest.approx(metrics["test/inversion_eta"]) and config["eta_quantile"] == 0.95


def test_evaluate_inc_with_transfer_attacks_reports_rejection(tiny_vae, fmnist_victim, idx_dir, tmp_path):
    torch.manual_seed(1)
    robust = tmp_path / "robust.ckpt"
    save_checkpoint(robust, "victim", FMNIST_VICTIM, build_classifier(**FMNIST_VICTIM).state_dict())
    common = ["--data-dir", str(idx_dir), "--batch-size", "10", "--num-samples", "10", "--attacks", "clean,fgsm"]
    common += ["--eps", "0.1", "--defense", "inc"]
    config = tmp_path / "inc.yaml"
    config.write_text(
        "data: {class_path: datamodules.FashionMNISTDataModule, init_args: {}}\n"
        f"defense_params: {{inc: {{generator: {tiny_vae}, steps: 20, restarts: 1}}}}\n"
    )
    rows = evaluate.main(
        ["--config", str(config), *common, "--victim", str(robust), "--attack-victim", str(fmnist_victim)]
        + ["--out", str(tmp_path / "transfer")]
    )
    assert [r["attack"] for r in rows] == ["clean", "fgsm"]
    assert all(r["rejected_share"] is not None and r["accuracy_with_rejection"] is not None for r in rows)
    result = json.loads((tmp_path / "transfer" / "results.json").read_text())
    assert result["attack_victim_sha256"] and "Rejection (INC" in (tmp_path / "transfer" / "results.md").read_text()
    records = [json.loads(line) for line in (tmp_path / "transfer" / "samples.jsonl").read_text().splitlines()]
    assert all("inversion_distance" in r and "rejected" in r for r in records)
    # The FGSM examples were crafted on the attack victim: the same as attacking it directly.
    direct = evaluate.main(
        ["--config", str(config), *common, "--victim", str(fmnist_victim), "--out", str(tmp_path / "direct")]
    )
    transfer_l2 = [r["mean_l2"] for r in rows]
    assert transfer_l2 == [r["mean_l2"] for r in direct]


def test_attack_victim_must_match_the_victim(tiny_victim, fmnist_victim, idx_dir, tmp_path):
    with pytest.raises(UserError, match=r"--attack-victim .* takes 3-channel images; the data set's are \(1, 28, 28\)"):
        evaluate.main(
            ["--victim", str(fmnist_victim), "--attack-victim", str(tiny_victim), "--data-dir", str(idx_dir)]
            + ["--config", "evaluate_fmnist.yaml", "--out", str(tmp_path / "x")]
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["vae_fmnist", "vae_mnist", "vae_cifar", "inc_robust_fmnist"])
def test_paper_004_configs_parse_and_build(name, tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    cli = train.build_cli(["--config", name, "--trainer.logger", "false"], save_config=False)
    assert cli.datamodule.batch_size > 0 and cli.model.checkpoint_kind in ("vae", "victim")


def test_conv_vae_smoke_epoch_exports_a_generator_inc_accepts(cifar_batches_dir, tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    export = tmp_path / "vae_cifar.ckpt"
    train.main(
        [
            "--config", "vae_cifar",
            "--data.data_dir", str(cifar_batches_dir),
            "--data.val_size", "20", "--data.batch_size", "16", "--data.eval_batch_size", "16",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
            "--model.init_args.calibration_images", "4",
            "--model.init_args.inversion", "{steps: 3, restarts: 1}",
            "--export", str(export),
        ]
    )  # fmt: skip
    vae = load_vae(export)
    assert vae.decode(torch.randn(2, 128)).shape == (2, 3, 32, 32) and vae.checkpoint_config["inversion_eta"] > 0
    inc = build_defense("inc", generator=str(export), steps=2, restarts=1)
    assert inc.purify(torch.rand(2, 3, 32, 32), nn.Identity(), torch.arange(2)).shape == (2, 3, 32, 32)


def test_inc_study_writes_table1_and_the_minmax_figures(tiny_vae, fmnist_victim, idx_dir, tmp_path):
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("inc_table1", REPO / "studies" / "inc_table1.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    torch.manual_seed(2)
    robust = tmp_path / "robust.ckpt"
    save_checkpoint(robust, "victim", FMNIST_VICTIM, build_classifier(**FMNIST_VICTIM).state_dict())
    config = tmp_path / "inc.yaml"
    config.write_text(
        "data: {class_path: datamodules.FashionMNISTDataModule, init_args: {}}\n"
        f"defense: inc\ndefense_params: {{inc: {{generator: {tiny_vae}, steps: 5, restarts: 1}}}}\n"
        "attacks: [clean, fgsm, cw]\nattack_params: {cw: {steps: 3}}\neps: '0.05,0.1'\nbatch_size: 10\n"
    )
    out = tmp_path / "study"
    study.main(
        ["--out", str(out), "--config", str(config), "--victim", str(fmnist_victim), "--robust", str(robust)]
        + ["--generator", str(tiny_vae), "--num-samples", "6", "--data-dir", str(idx_dir)]
        + ["--pairs", "4", "--steps", "60", "--eta2-per-pixel", "5e-5,2e-3"]
    )
    md = (out / "results.md").read_text()
    assert "| fgsm eps 0.05 (0.1 in [-1, 1]) |" in md and "| cw |" in md and "on the robust C" in md
    result = json.loads((out / "results.json").read_text())
    assert set(result["table1"]) == {"none", "inc", "robust", "inc_robust"}
    assert [m["settings"]["eta2_per_pixel"] for m in result["minmax"]] == [5e-5, 2e-3]
    assert (out / "minmax_convergence_0.002.png").is_file()
