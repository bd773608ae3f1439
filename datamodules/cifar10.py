"""CIFAR-10 from torchvision's pickled batches or from an image-folder copy."""

from pathlib import Path

import torchvision

from dipdefense.common.data_paths import cache_root, extract_archive, is_archive, resolve_data_dir
from dipdefense.common.errors import DataNotFoundError

from .image_files import class_folders, load_image_folder, load_pickled_batches
from .in_memory import InMemoryImageDataModule, UInt8ImageDataset

CIFAR10_ENV = "DIPDEF_CIFAR10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES_DIR = "cifar-10-batches-py"


def _find_layout(root: Path) -> tuple[str, Path] | None:
    """('batches', dir) or ('folders', dir) for ``root`` or a folder one level below it."""
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (candidate / "data_batch_1").is_file():
            return "batches", candidate
        if (candidate / BATCHES_DIR / "data_batch_1").is_file():
            return "batches", candidate / BATCHES_DIR
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return "folders", candidate
    return None


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10 (Krizhevsky 2009), 32x32 RGB, 10 classes, images in [0, 1].

    ``data_dir`` accepts, in this order of lookup (itself or one level below it):
    torchvision's ``cifar-10-batches-py`` folder; an image-folder copy with
    ``train/<class>/*`` and ``test/<class>/*`` (class names as in CIFAR-10); or a
    ``.tar.gz`` of either, extracted once into the cache. When ``data_dir`` is unset the
    environment variable ``DIPDEF_CIFAR10`` is used, then ``~/.cache/dipdefense/cifar10``.

    Arguments:
        data_dir: where the data is. Default: None (environment, then cache).
        download: fetch torchvision's copy into ``data_dir`` when it is missing. Default: False.
        (the rest as :class:`InMemoryImageDataModule`)
    """

    num_classes = 10
    image_shape = (3, 32, 32)
    classes = CIFAR10_CLASSES

    def __init__(self, data_dir: str | None = None, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir, CIFAR10_ENV, cache_root() / "cifar10")
        self.download = download
        self._layout: tuple[str, Path] | None = None

    def _locate(self) -> tuple[str, Path]:
        if self._layout is not None:
            return self._layout
        root = self.data_dir
        if is_archive(root):
            root = extract_archive(root)
        if root.is_dir() and (layout := _find_layout(root)) is not None:
            self._layout = layout
            return layout
        if self.download:
            torchvision.datasets.CIFAR10(root, train=True, download=True)
            self._layout = ("batches", root / BATCHES_DIR)
            return self._layout
        raise DataNotFoundError(
            f"CIFAR-10 not found at {self.data_dir}. Accepted: a folder holding {BATCHES_DIR}/ "
            "(torchvision's format; data.download=true fetches it when online), a folder with "
            "train/<class>/*.jpg and test/<class>/*.jpg, or a .tar.gz of either. "
            f"Set data.data_dir (config or --data.data_dir) or ${CIFAR10_ENV}."
        )

    def load_split(self, train: bool) -> UInt8ImageDataset:
        kind, where = self._locate()
        if kind == "batches":
            names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            images, labels = load_pickled_batches([where / n for n in names], self.image_shape)
        else:
            split = where / ("train" if train else "test")
            if not split.is_dir() or not class_folders(split):
                raise DataNotFoundError(f"{split} is missing or has no class folders (expected {split}/<class>/*.jpg)")
            images, labels = load_image_folder(split, self.classes, self.image_shape)
        return UInt8ImageDataset(images, labels, self.classes)
