"""LightningDataModules. Images leave them in [0, 1], unnormalised."""

from dipdefense.datamodules.adversarial_detection import AdversarialDetectionDataModule
from dipdefense.datamodules.cifar10 import CIFAR10DataModule
from dipdefense.datamodules.imagenet import ImageNetValDataModule
from dipdefense.datamodules.mnist_like import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "AdversarialDetectionDataModule",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageNetValDataModule",
    "MNISTDataModule",
]
