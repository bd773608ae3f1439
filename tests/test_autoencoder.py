import pytest
import torch

import train
from dipdefense.common.errors import CheckpointError, UserError
from dipdefense.defenses import build_defense
from dipdefense.nets import load_autoencoder
from dipdefense.nets.autoencoder import ConvAutoencoder
from tests.conftest import REPO


def test_autoencoder_has_four_conv_layers_and_keeps_the_shape():
    net = ConvAutoencoder()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == 4
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert ConvAutoencoder(in_channels=1)(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="two positive widths"):
        ConvAutoencoder(channels=(8,))


def test_training_reduces_reconstruction_error_and_exports_a_purifier(cifar_batches_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "ae.ckpt"
    common = [
        "--config", "autoencoder_cifar",
        "--data.data_dir", str(cifar_batches_dir),
        "--data.val_size", "20",
        "--data.batch_size", "16",
        "--data.eval_batch_size", "16",
        "--data.augment", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
    ]  # fmt: skip
    train.main([*common, "--trainer.max_epochs", "4", "--export", str(export)])
    net = load_autoencoder(export)
    assert {"test/mse", "test/psnr", "test/ssim"} <= set(net.checkpoint_metrics)
    images = torch.rand(4, 3, 32, 32)
    defense = build_defense("autoencoder", checkpoint=str(export))
    out = defense.purify(images, torch.nn.Identity(), torch.arange(4))
    assert torch.equal(out, net(images).clamp(0, 1))
    assert defense.params()["channels"] == [64, 16]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_steps_learn_to_reconstruct_smooth_images():
    from lightning_modules import AutoencoderPurifier

    torch.manual_seed(0)
    colours = torch.rand(64, 3, 1, 1)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32)
    images = (0.7 * colours + 0.3 * ramp).expand(64, 3, 32, 32).contiguous()
    module = AutoencoderPurifier(channels=(16, 8))
    optimizer = module.configure_optimizers()
    start = torch.nn.functional.mse_loss(module(images), images).item()
    for _ in range(150):
        optimizer.zero_grad()
        module.training_step((images, torch.zeros(64, dtype=torch.long)), 0).backward()
        optimizer.step()
    end = torch.nn.functional.mse_loss(module(images), images).item()
    assert end < start / 10, (start, end)


def test_a_victim_checkpoint_is_not_an_autoencoder():
    with pytest.raises(CheckpointError, match="is a 'victim' checkpoint, expected a 'autoencoder'"):
        load_autoencoder(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_defense("autoencoder", checkpoint="no/such.ckpt")
    with pytest.raises(UserError, match="has no parameter"):
        build_defense("autoencoder", ckpt="x")
