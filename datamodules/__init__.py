"""LightningDataModules. Images leave them in [0, 1], unnormalised."""

from .adversarial_detection import AdversarialDetectionDataModule
from .cifar10 import CIFAR10DataModule
from .imagenet import ImageNetValDataModule
from .mnist_like import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "AdversarialDetectionDataModule",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageNetValDataModule",
    "MNISTDataModule",
]
