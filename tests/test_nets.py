import warnings

import pytest
import torch

from dipdefense.nets import ARCHITECTURES, build_classifier
from dipdefense.nets.cifar_resnet import resnet_cifar
from dipdefense.nets.normalize import Normalize

SMALL = [
    ("resnet20", 3, 32),
    ("resnet32", 3, 32),
    ("resnet56", 3, 32),
    ("resnet50_cifar", 3, 32),
    ("vgg16", 3, 32),
    ("vit_small", 3, 32),
    ("airbench94", 3, 32),
    ("small_cnn", 1, 28),
]
IMAGENET = ["resnet18", "resnet50", "resnet101", "resnet152", "vit_b_16"]


@pytest.mark.parametrize(("arch", "channels", "size"), SMALL)
def test_small_architectures_forward_backward(arch, channels, size):
    torch.manual_seed(0)
    model = build_classifier(
        arch, num_classes=10, in_channels=channels, image_size=size, mean=[0.5] * channels, std=[0.25] * channels
    )
    x = torch.rand(2, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", IMAGENET)
def test_imagenet_architectures_without_weights(arch):
    model = build_classifier(arch, num_classes=1000, image_size=224, mean="imagenet").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_resnet20_has_he_et_al_parameter_count():
    # He et al. 2016 Table 6: ResNet-20 has 0.27 M parameters: 269,722 with option-A shortcuts
    # (272,474 with 1x1 projections, which option A avoids).
    assert sum(p.numel() for p in resnet_cifar(20).parameters()) == 269_722
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)


def test_normalize_is_per_channel_and_part_of_the_model():
    norm = Normalize([0.5, 0.0, 1.0], [0.5, 2.0, 1.0])
    x = torch.ones(1, 3, 2, 2)
    assert norm(x)[0, :, 0, 0].tolist() == [1.0, 0.5, 0.0]
    model = build_classifier("resnet20", mean="cifar10")
    assert isinstance(model[0], Normalize) and "0.mean" in model.state_dict()


def test_unknown_names_list_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet21'.*resnet20"):
        build_classifier("resnet21")
    with pytest.raises(ValueError, match="unknown normalisation 'svhn'.*cifar10"):
        build_classifier("resnet20", mean="svhn")
    with pytest.raises(ValueError, match="pretrained weights exist only"):
        build_classifier("resnet20", pretrained=True)
    assert set(ARCHITECTURES) >= {a for a, _, _ in SMALL} | set(IMAGENET)


def test_pretrained_weights_fall_back_with_a_warning_when_unreachable(monkeypatch):
    import torchvision

    real = torchvision.models.get_model

    def offline(name, weights=None, **kwargs):
        if weights is not None:
            raise OSError("no network")
        return real(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_classifier("resnet18", num_classes=1000, mean="imagenet", pretrained=True)
    assert any("weights=None" in str(w.message) for w in caught)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
