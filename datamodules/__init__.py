"""LightningDataModules. Images leave them in [0, 1], unnormalised."""

from datamodules.adversarial_detection import AdversarialDetectionDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.imagenet import ImageNetValDataModule
from datamodules.mnist_like import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "AdversarialDetectionDataModule",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageNetValDataModule",
    "MNISTDataModule",
]
