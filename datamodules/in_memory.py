"""A data module over images held in memory as one uint8 tensor.

Small data sets (CIFAR-10, Fashion-MNIST, MNIST) are decoded once into a uint8 tensor
[N, C, H, W]; batches become float in [0, 1] and are augmented on the whole batch after
transfer to the device. Images leave the data module unnormalised: normalisation lives
in the model.
"""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .augment import PADDING_MODES, alternating_flip_mask, random_crop_flip

FLIP_MODES = ("random", "alternating")


class UInt8ImageDataset(Dataset):
    """(image in [0, 1] float32 [C, H, W], label) pairs from uint8 images and int labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels.long(), classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])


class _Indexed(Dataset):
    """(image, label, index): the training batches of an alternating flip carry each image's index
    to ``on_after_batch_transfer``, which drops it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return (*self.dataset[index], index)


class InMemoryImageDataModule(pl.LightningDataModule):
    """Base class: subclasses implement ``load_split(train: bool) -> UInt8ImageDataset``.

    Arguments:
        batch_size: training batch size. Default: 128.
        eval_batch_size: validation/test batch size. Default: ``batch_size``.
        val_size: images held out of the training split for validation (seeded). Default: 5000.
        seed: seed of the train/val split. Default: 0.
        num_workers: DataLoader workers. Default: 0 (the data is in memory).
        augment: random crop + flip on training batches. Default: True.
        crop_padding: padding of the random crop. Default: 4.
        flip: horizontal flips. Default: True.
        crop_padding_mode: "zeros" or "reflect" (airbench's translations). Default: "zeros".
        flip_mode: "random" (each image, each epoch) or "alternating" (Jordan 2024 Sec. 3.6: a fixed
            half mirrored in even epochs, the other half in odd ones). Default: "random".
    """

    num_classes = 10
    image_shape: tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        crop_padding_mode: str = "zeros",
        flip_mode: str = "random",
    ) -> None:
        super().__init__()
        if crop_padding_mode not in PADDING_MODES:
            raise ValueError(f"crop_padding_mode={crop_padding_mode!r}; accepted: {', '.join(PADDING_MODES)}")
        if flip_mode not in FLIP_MODES:
            raise ValueError(f"flip_mode={flip_mode!r}; accepted: {', '.join(FLIP_MODES)}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = num_workers
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip
        self.crop_padding_mode = crop_padding_mode
        self.flip_mode = flip_mode
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: UInt8ImageDataset | None = None

    def load_split(self, train: bool) -> UInt8ImageDataset:
        raise NotImplementedError

    def prepare_data(self) -> None:
        # Runs on one process: extraction and tensor caches are built here, so DDP ranks
        # find them ready in setup().
        self.load_split(train=True)
        self.load_split(train=False)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self.load_split(train=True)
            if not 0 <= self.val_size < len(full):
                raise ValueError(f"val_size={self.val_size} must be in [0, {len(full)}) for this training split")
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.val_set = Subset(full, order[: self.val_size])
            self.train_set = Subset(full, order[self.val_size :])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.load_split(train=False)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        alternating = self.augment and self.flip and self.flip_mode == "alternating"
        return self._loader(_Indexed(self.train_set) if alternating else self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            images, labels, *index = batch
            flip = self.flip
            if index:
                flip = alternating_flip_mask(index[0], self.trainer.current_epoch, len(self.train_set), self.seed)
            batch = (random_crop_flip(images, self.crop_padding, flip, padding_mode=self.crop_padding_mode), labels)
        return batch
