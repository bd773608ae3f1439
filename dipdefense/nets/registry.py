"""One name per classifier architecture; ``build_classifier`` returns it with its
normalisation layer in front, taking images in [0, 1]."""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from dipdefense.nets.airbench import AirbenchNet
from dipdefense.nets.cifar_resnet import resnet50_cifar, resnet_cifar
from dipdefense.nets.imagenet import IMAGENET_ARCHITECTURES, torchvision_classifier
from dipdefense.nets.normalize import DATASET_STATS, Normalize
from dipdefense.nets.small_cnn import SmallCNN
from dipdefense.nets.vgg import VGG
from dipdefense.nets.vit_small import small_vit


def _small(builder: Callable[..., nn.Module], options: Callable[..., nn.Module] | None = None):
    """A builder of a small network; ``options`` is the class whose keyword arguments beyond the
    common ones the architecture accepts as ``arch_options``."""

    def build(num_classes: int, in_channels: int, image_size: int, pretrained: bool, **arch_options) -> nn.Module:
        if pretrained:
            raise ValueError("pretrained weights exist only for the torchvision ImageNet architectures")
        return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **arch_options)

    common = {"self", "num_classes", "in_channels", "image_size"}
    build.options = [] if options is None else [n for n in inspect.signature(options).parameters if n not in common]
    return build


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet20": _small(lambda image_size, **kw: resnet_cifar(20, **kw)),
    "resnet32": _small(lambda image_size, **kw: resnet_cifar(32, **kw)),
    "resnet56": _small(lambda image_size, **kw: resnet_cifar(56, **kw)),
    "resnet50_cifar": _small(lambda image_size, **kw: resnet50_cifar(**kw)),
    "vgg16": _small(lambda image_size, **kw: VGG(**kw)),
    "airbench94": _small(lambda image_size, **kw: AirbenchNet(**kw), options=AirbenchNet),
    "vit_small": _small(small_vit, options=small_vit),
    "small_cnn": _small(lambda **kw: SmallCNN(**kw)),
}
for _name in IMAGENET_ARCHITECTURES:
    ARCHITECTURES[_name] = lambda num_classes, in_channels, image_size, pretrained, _n=_name: torchvision_classifier(
        _n, num_classes, pretrained
    )


def build_classifier(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | str = "cifar10",
    std: Sequence[float] | None = None,
    pretrained: bool = False,
    arch_options: Mapping[str, Any] | None = None,
) -> nn.Sequential:
    """``Normalize(mean, std)`` followed by the named network.

    Arguments:
        arch: one of ``ARCHITECTURES``.
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
        image_size: input side (used by the ViT and the small CNN). Default: 32.
        mean: per-channel mean, or a data set name from ``DATASET_STATS``. Default: "cifar10".
        std: per-channel std; taken from the data set when ``mean`` is a name.
        pretrained: torchvision ImageNet weights (ImageNet architectures only). Default: False.
        arch_options: the architecture's own arguments, e.g. ``{"tta_level": 2}`` for
            ``airbench94``; an architecture that takes none refuses any. Default: None.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; accepted: {', '.join(sorted(ARCHITECTURES))}")
    if isinstance(mean, str):
        if mean not in DATASET_STATS:
            raise ValueError(f"unknown normalisation {mean!r}; accepted: {', '.join(DATASET_STATS)} or a list")
        mean, std = DATASET_STATS[mean]
    if std is None:
        raise ValueError("std is required when mean is given as numbers")
    if len(mean) == 1 and in_channels > 1:
        mean, std = list(mean) * in_channels, list(std) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {in_channels} channels")
    arch_options = dict(arch_options or {})
    accepted = getattr(ARCHITECTURES[arch], "options", [])
    if unknown := sorted(set(arch_options) - set(accepted)):
        raise ValueError(
            f"architecture {arch!r} takes no option {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    network = ARCHITECTURES[arch](
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, pretrained=pretrained, **arch_options
    )
    return nn.Sequential(Normalize(mean, std), network)
