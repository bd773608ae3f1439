"""ImageNet validation images from a class-folder copy, for torchvision's pretrained models."""

import lightning.pytorch as pl
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from dipdefense.common.data_paths import cache_root, resolve_data_dir
from dipdefense.common.errors import DataNotFoundError

from .image_files import class_folders

IMAGENET_ENV = "DIPDEF_IMAGENET_VAL"


class ImageNetValDataModule(pl.LightningDataModule):
    """ILSVRC-2012 validation set in ``<data_dir>/<wnid>/*.JPEG`` (1000 folders named by
    WordNet id, so ImageFolder's sorted order is torchvision's class index), resized to
    ``resize`` and centre-cropped to ``image_size``; images in [0, 1]. Serves the val and
    test loaders (there is no training here: the victims are torchvision's pretrained ones).

    Arguments:
        data_dir: the folder. Default: None (``$DIPDEF_IMAGENET_VAL``, then ``~/.cache/dipdefense/imagenet-val``).
        image_size: crop side. Default: 224.
        resize: shorter side before cropping. Default: 256.
        batch_size: Default: 64.
        num_workers: JPEG decoding workers. Default: 4.
        max_images: evaluate only the first N images (in a fixed shuffled order). Default: None.
        seed: seed of that order. Default: 0.
        expected_classes: refuse folders with another class count (None: any). Default: 1000.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 64,
        num_workers: int = 4,
        max_images: int | None = None,
        seed: int = 0,
        expected_classes: int | None = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir, IMAGENET_ENV, cache_root() / "imagenet-val")
        self.transform = T.Compose(
            [
                T.ToImage(),
                T.Resize(resize, antialias=True),
                T.CenterCrop(image_size),
                T.ToDtype(torch.float32, scale=True),
            ]
        )
        self.dataset = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        d = self.data_dir
        if not d.is_dir() or not class_folders(d):
            raise DataNotFoundError(
                f"ImageNet validation folder not found at {d} (expected <dir>/<wnid>/*.JPEG, e.g. "
                f"n01440764/ILSVRC2012_val_00000293.JPEG). Set data.data_dir or ${IMAGENET_ENV}."
            )
        n = len(class_folders(d))
        if self.hparams.expected_classes and n != self.hparams.expected_classes:
            raise DataNotFoundError(
                f"{d} has {n} class folders; expected {self.hparams.expected_classes} (one per ImageNet class)"
            )
        dataset = ImageFolder(str(d), transform=self.transform)
        if self.hparams.max_images:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.hparams.seed))
            dataset = Subset(dataset, order[: self.hparams.max_images].tolist())
        self.dataset = dataset

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
