import math

import pytest
import torch

import train
from dipdefense.common.errors import CheckpointError
from dipdefense.nets import load_glow
from dipdefense.nets.glow import bits_per_dim, build_glow, glow_latents
from tests.conftest import REPO


def test_latent_shapes_and_exact_inverse():
    flow = build_glow(steps=1, hidden_channels=8)
    x = torch.rand(3, 3, 32, 32)
    z, _ = flow.inverse_and_log_det(x)
    assert [tuple(level.shape[1:]) for level in z] == [(48, 4, 4), (12, 8, 8), (6, 16, 16)]
    back, _ = flow.forward_and_log_det(z)
    assert (back - x).abs().max() < 1e-4
    assert glow_latents(flow, x).shape == (3, 3 * 32 * 32)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        build_glow((3, 28, 28), levels=3)


def test_bits_per_dim_of_uniform_8_bit_data_is_8():
    # Uniform noise on [0, 1] has density 1: continuous NLL 0, i.e. exactly 8 bits per 8-bit value.
    assert bits_per_dim(torch.tensor(0.0), 3072).item() == 8.0
    assert math.isclose(bits_per_dim(torch.tensor(3072 * math.log(2)), 3072).item(), 9.0)


def test_training_lowers_bpd_and_the_export_reproduces_the_latents(cifar_batches_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "glow.ckpt"
    train.main(
        [
            "--config", "glow_cifar",
            "--data.data_dir", str(cifar_batches_dir),
            "--data.val_size", "20",
            "--data.batch_size", "16",
            "--data.eval_batch_size", "16",
            "--model.init_args.steps", "1",
            "--model.init_args.hidden_channels", "8",
            "--model.init_args.warmup_steps", "1",
            "--trainer.max_epochs", "2",
            "--trainer.precision", "32-true",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false",
            "--export", str(export),
        ]
    )  # fmt: skip
    flow = load_glow(export)
    assert flow.checkpoint_config["steps"] == 1 and "test/bpd" in flow.checkpoint_metrics
    x = torch.rand(2, 3, 32, 32)
    # Reloading does not redo actnorm's data-dependent initialisation.
    assert torch.equal(glow_latents(flow, x), glow_latents(load_glow(export), x))
    from lightning_modules import GlowDensity

    resumed = GlowDensity(steps=1, hidden_channels=8, init_checkpoint=str(export))
    assert torch.equal(glow_latents(resumed.net.eval(), x), glow_latents(flow, x))
    with pytest.raises(CheckpointError, match="do not fit"):
        GlowDensity(steps=2, hidden_channels=8, init_checkpoint=str(export))
    with pytest.raises(CheckpointError, match="expected a 'glow' checkpoint"):
        load_glow(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")


def test_a_few_steps_lower_the_bpd_of_structured_images():
    from lightning_modules import GlowDensity

    torch.manual_seed(0)
    colours = torch.rand(32, 3, 1, 1).expand(32, 3, 32, 32).contiguous()
    module = GlowDensity(steps=1, hidden_channels=16, warmup_steps=1)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    with torch.no_grad():
        start = module._bpd(colours).item()
    for _ in range(30):
        optimizer.zero_grad()
        module._bpd(colours).backward()
        optimizer.step()
    with torch.no_grad():
        assert module._bpd(colours).item() < start - 0.5
