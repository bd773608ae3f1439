"""The shipped victims meet their accuracy bars on the real data, when it is at hand."""

from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule, FashionMNISTDataModule
from nets import load_classifier
from tests.conftest import REPO, SHARED_CIFAR

CHECKPOINTS = REPO / "checkpoints"
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            x = images[start : start + 500].float() / 255
            correct += (model(x).argmax(1) == labels[start : start + 500]).sum().item()
    return correct / len(images)


@pytest.mark.parametrize("name", ["victim_cifar_resnet20.ckpt", "victim_fmnist_cnn.ckpt"])
def test_shipped_checkpoints_are_small_and_load(name):
    path = CHECKPOINTS / name
    assert path.is_file(), f"{path} must ship with the repository"
    assert path.stat().st_size < 5_000_000
    load_classifier(path)


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason=f"real CIFAR-10 copy not at {SHARED_CIFAR}")
def test_resnet20_scores_88_percent_on_1000_real_test_images():
    test = CIFAR10DataModule(data_dir=str(SHARED_CIFAR)).load_split(train=False)
    sample = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:1000]
    acc = _accuracy(
        load_classifier(CHECKPOINTS / "victim_cifar_resnet20.ckpt"), test.images[sample], test.labels[sample]
    )
    assert acc >= 0.88, f"ResNet-20 top-1 {acc:.3f} on 1000 real CIFAR-10 test images"


@pytest.mark.skipif(not FMNIST_DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fmnist_cnn_scores_91_percent_on_the_real_test_set():
    test = FashionMNISTDataModule(data_dir=str(FMNIST_DEBIAN)).load_split(train=False)
    acc = _accuracy(load_classifier(CHECKPOINTS / "victim_fmnist_cnn.ckpt"), test.images, test.labels)
    assert acc >= 0.91, f"Fashion-MNIST CNN top-1 {acc:.3f} on the 10,000 test images"


@pytest.mark.parametrize(
    "name, loader, metric, bound",
    [
        ("autoencoder_cifar.ckpt", "load_autoencoder", "test/mse", 0.001),
        ("glow_cifar.ckpt", "load_glow", "test/bpd", 3.5),
        ("glow_detector_cifar.ckpt", "load_glow_detector", "test/acc", 0.85),
    ],
)
def test_shipped_learned_defenses_load_and_carry_their_figures(name, loader, metric, bound):
    import nets

    path = CHECKPOINTS / name
    assert path.is_file() and path.stat().st_size < 20_000_000
    model = getattr(nets, loader)(path)
    value = model.checkpoint_metrics[metric]
    assert value < bound if metric in ("test/mse", "test/bpd") else value > bound, (metric, value)


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason=f"real CIFAR-10 copy not at {SHARED_CIFAR}")
def test_glow_gate_separates_real_clean_from_fgsm_images():
    from attacks import build_attack
    from defenses import build_defense

    test = CIFAR10DataModule(data_dir=str(SHARED_CIFAR)).load_split(train=False)
    x, y = test.images[:64].float() / 255, test.labels[:64]
    adversarial = build_attack("fgsm", eps=0.02)(load_classifier(CHECKPOINTS / "victim_cifar_resnet20.ckpt"), x, y)
    gate = build_defense("glow_gate")
    flagged_clean, flagged_adv = (gate.score(x) >= 0.5).float().mean(), (gate.score(adversarial) >= 0.5).float().mean()
    assert flagged_clean < 0.2 and flagged_adv > 0.8, (flagged_clean, flagged_adv)
