"""torchvision's ImageNet classifiers, with pretrained weights when they can be had."""

import warnings

import torchvision
from torch import nn

IMAGENET_ARCHITECTURES = ("resnet18", "resnet50", "resnet101", "resnet152", "vit_b_16")


def torchvision_classifier(name: str, num_classes: int = 1000, pretrained: bool = True) -> nn.Module:
    """Build ``torchvision.models.<name>``.

    With ``pretrained`` the DEFAULT ImageNet weights are loaded (downloaded on first use
    into torch's hub cache). When they cannot be had (no network) the model is built
    with ``weights=None`` and a warning says so: its predictions are then meaningless
    until a checkpoint is loaded into it.
    """
    if pretrained and num_classes != 1000:
        raise ValueError(f"pretrained ImageNet weights have 1000 classes, not num_classes={num_classes}")
    if pretrained:
        try:
            return torchvision.models.get_model(name, weights="DEFAULT")
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            warnings.warn(
                f"could not fetch pretrained weights for {name} ({err.__class__.__name__}: {err}); "
                "building it with weights=None (random weights)",
                stacklevel=2,
            )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
