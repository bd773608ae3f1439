"""airbench94 as a victim (issue 40): the whitening layer, test-time augmentation inside the
network, the alternating flip, the recipe's schedule and Lookahead, and the options' errors."""

import pytest
import torch
import torch.nn.functional as F

import train
from datamodules import CIFAR10DataModule
from datamodules.augment import alternating_flip_mask, random_crop_flip
from dipdefense.common.errors import CheckpointError
from dipdefense.nets import load_classifier
from dipdefense.nets.airbench import AirbenchNet, patch_whitening_filters, tta_logits
from dipdefense.nets.registry import build_classifier
from lightning_modules.fast_victim import triangular_schedule
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def test_whitening_filters_give_patches_unit_covariance():
    """Known answer: on correlated images, the first half of the filters maps 2x2 patches to
    coordinates with covariance diag(lambda / (lambda + eps)), i.e. about the identity."""
    generator = torch.Generator().manual_seed(0)
    smooth = F.avg_pool2d(torch.randn(200, 3, 34, 34, generator=generator), 3, stride=1)  # neighbours correlate
    images = smooth + 0.5 * smooth.mean(1, keepdim=True)  # and channels too
    filters = patch_whitening_filters(images, kernel_size=2, eps=1e-8)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.equal(filters[12:], -filters[:12])
    whitened = F.conv2d(images, filters[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = whitened.T @ whitened / len(whitened)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_tta_is_the_mean_over_the_papers_six_views_and_only_in_eval_mode():
    torch.manual_seed(0)
    net = AirbenchNet(widths=(8, 16, 16), tta_level=2).eval()
    x = torch.rand(3, 3, 32, 32)
    f = net.features_to_logits
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
    with torch.no_grad():
        expected = 0.25 * (f(x) + f(x.flip(-1))) + 0.125 * (
            f(up_left) + f(up_left.flip(-1)) + f(down_right) + f(down_right.flip(-1))
        )
        assert torch.allclose(net(x), expected, atol=1e-5)
        mirror = tta_logits(f, x, level=1)
        assert torch.allclose(mirror, tta_logits(f, x.flip(-1), level=1), atol=1e-5)  # flip-invariant
        net.train()
        assert torch.equal(net(x), f(x))
    with pytest.raises(ValueError, match=r"tta_level=3; accepted: 0 \(none\), 1 \(mirror\), 2"):
        AirbenchNet(tta_level=3)


def test_arch_options_reach_the_network_and_others_are_refused_by_name():
    model = build_classifier("airbench94", arch_options={"tta_level": 1})
    assert model[1].tta_level == 1 and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="'airbench94' takes no option depth; accepted: widths, .*tta_level"):
        build_classifier("airbench94", arch_options={"depth": 3})
    with pytest.raises(ValueError, match="'resnet20' takes no option tta_level; accepted: none"):
        build_classifier("resnet20", arch_options={"tta_level": 2})


def test_alternating_flip_mirrors_each_image_once_in_every_two_epochs():
    indices = torch.arange(1000)
    even, odd = (alternating_flip_mask(indices, epoch, size=1000, seed=3) for epoch in (4, 5))
    assert torch.equal(even, ~odd)
    assert torch.equal(even, alternating_flip_mask(indices, 0, size=1000, seed=3))
    assert 400 < int(even.sum()) < 600
    assert torch.equal(alternating_flip_mask(indices[[7, 3]], 4, size=1000, seed=3), even[[7, 3]])


def test_reflect_translation_is_a_window_of_the_reflect_padded_image():
    images = torch.rand(4, 3, 8, 8)
    out = random_crop_flip(images, padding=2, flip=False, padding_mode="reflect")
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    for image, window in zip(padded, out, strict=True):
        assert any(torch.equal(image[:, y : y + 8, x : x + 8], window) for y in range(5) for x in range(5))
    mask = torch.tensor([True, False, True, False])
    flipped = random_crop_flip(images, padding=0, flip=mask)
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    with pytest.raises(ValueError, match="padding_mode='edge'; accepted: zeros, reflect"):
        random_crop_flip(images, padding_mode="edge")
    with pytest.raises(ValueError, match="flip_mode='sometimes'; accepted: random, alternating"):
        CIFAR10DataModule(flip_mode="sometimes")


def test_triangular_schedule_matches_the_papers_corners():
    assert triangular_schedule(0, 476, 0.2, 0.23, 0.07) == pytest.approx(0.2)
    assert triangular_schedule(109, 476, 0.2, 0.23, 0.07) == pytest.approx(1.0)
    assert triangular_schedule(476, 476, 0.2, 0.23, 0.07) == pytest.approx(0.07)


def test_recipe_fits_whitens_from_training_patches_stops_on_schedule_and_exports_tta(
    cifar_batches_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "fast.ckpt"
    args = [
        "--config", "victim_cifar_fast",
        "--data.data_dir", str(cifar_batches_dir),
        "--data.batch_size", "16",
        "--data.eval_batch_size", "30",
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.train_epochs", "1.5",
        "--model.init_args.lookahead_start_epoch", "0",
        "--model.init_args.lookahead_every", "2",
        "--model.init_args.whitening_images", "40",
        "--model.init_args.arch_options", "{widths: [8, 16, 16], tta_level: 2}",
    ]  # fmt: skip
    train.main([*args, "--export", str(export)])
    model = load_classifier(export)
    assert model.checkpoint_config["arch_options"] == {"widths": [8, 16, 16], "tta_level": 2}
    assert model[1].tta_level == 2

    data = CIFAR10DataModule(data_dir=str(cifar_batches_dir), val_size=0)
    data.setup("fit")
    first = torch.stack([data.train_set[i][0] for i in range(40)])
    assert torch.equal(model[1].whiten.weight, patch_whitening_filters(model[0](first), 2))  # frozen after init

    last = next((tmp_path / "logs" / "victim_cifar_fast").rglob("last.ckpt"))
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 9  # 100 images / 16 = 6 steps an epoch; the schedule ends at 1.5 epochs
    assert state["lookahead"] is not None
    network_state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    # Each epoch ends with the network at its Lookahead average.
    assert all(torch.equal(network_state[k], v) for k, v in state["lookahead"].items() if v.is_floating_point())

    with pytest.raises(CheckpointError, match="takes no option tta_level"):
        load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt", arch_options={"tta_level": 2})
    with pytest.raises(ValueError, match="max_epochs=1 is shorter than train_epochs=1.5"):
        train.main([*args, "--trainer.max_epochs", "1"])
