"""Fashion-MNIST and MNIST from their IDX files (Debian's packages or torchvision's layout)."""

import gzip
import hashlib
import shutil
from pathlib import Path

import torchvision

from dipdefense.common.data_paths import cache_root, resolve_data_dir
from dipdefense.common.errors import DataNotFoundError

from .in_memory import InMemoryImageDataModule, UInt8ImageDataset

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _stage_idx_files(source: Path, stage_root: Path, dataset_dir: str) -> None:
    """Copy (gunzipping where needed) the four IDX files into torchvision's
    ``<root>/<dataset_dir>/raw/`` layout, once; each file is written under a temporary
    name and renamed, so a killed copy is redone."""
    raw = stage_root / dataset_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw / name
        if target.is_file():
            continue
        found = _find_idx(source, name)
        tmp = raw / f".{name}.partial"
        opener = gzip.open if found.suffix == ".gz" else open
        try:
            with opener(found, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as err:
            tmp.unlink(missing_ok=True)
            raise DataNotFoundError(f"{found} is not a readable IDX file ({err})") from None
        tmp.rename(target)


class _IDXDataModule(InMemoryImageDataModule):
    dataset_cls: type = torchvision.datasets.FashionMNIST
    env_var = ""
    system_dir = ""
    classes: list[str] = []
    num_classes = 10
    image_shape = (1, 28, 28)

    def __init__(self, data_dir: str | None = None, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        name = self.dataset_cls.__name__
        default = self.system_dir if Path(self.system_dir).is_dir() else cache_root() / name.lower()
        self.data_dir = resolve_data_dir(data_dir, self.env_var, default)
        self.download = download
        self._root: Path | None = None

    def _torchvision_root(self) -> Path:
        """A root folder in which torchvision's class finds ``<Name>/raw/*-ubyte``."""
        if self._root is not None:
            return self._root
        name = self.dataset_cls.__name__
        d = self.data_dir
        if (d / name / "raw").is_dir() and all((d / name / "raw" / f).is_file() for f in IDX_FILES):
            self._root = d
        elif d.is_dir() and all(_find_idx(d, f) for f in IDX_FILES):
            stage = cache_root() / "idx" / f"{name}-{hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:12]}"
            _stage_idx_files(d, stage, name)
            self._root = stage
        elif self.download:
            self.dataset_cls(str(d), train=True, download=True)
            self.dataset_cls(str(d), train=False, download=True)
            self._root = d
        else:
            raise DataNotFoundError(
                f"{name} not found at {d}. Accepted: a folder holding the four IDX files "
                f"({', '.join(IDX_FILES)}, optionally .gz; Debian's package puts them in {self.system_dir}), "
                f"or a torchvision root with {name}/raw/; data.download=true fetches them when online. "
                f"Set data.data_dir or ${self.env_var}."
            )
        return self._root

    def load_split(self, train: bool) -> UInt8ImageDataset:
        try:
            ds = self.dataset_cls(str(self._torchvision_root()), train=train, download=False)
        except (AssertionError, ValueError, RuntimeError) as err:  # torchvision asserts on bad magic numbers
            raise DataNotFoundError(
                f"{self.data_dir}: malformed {self.dataset_cls.__name__} IDX files ({err or 'bad header'})"
            ) from None
        return UInt8ImageDataset(ds.data.unsqueeze(1).contiguous(), ds.targets, self.classes)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey, 10 classes, images in [0, 1].

    ``data_dir`` (else ``$DIPDEF_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
    from Debian's ``dataset-fashion-mnist``, else ``~/.cache/dipdefense/fashionmnist``):
    a folder with the four IDX files (``.gz`` or not) or a torchvision root.

    Arguments:
        data_dir: Default: None. download: Default: False.
        (the rest as :class:`InMemoryImageDataModule`; crop padding 2 and flips suit it)
    """

    dataset_cls = torchvision.datasets.FashionMNIST
    env_var = "DIPDEF_FASHION_MNIST"
    system_dir = "/usr/share/datasets/fashion-mnist"
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    def __init__(self, data_dir: str | None = None, download: bool = False, crop_padding: int = 2, **kwargs) -> None:
        super().__init__(data_dir, download, crop_padding=crop_padding, **kwargs)


class MNISTDataModule(_IDXDataModule):
    """MNIST (LeCun et al. 1998): 28x28 grey digits, images in [0, 1]; no flips by default.

    ``data_dir`` (else ``$DIPDEF_MNIST``, else ``/usr/share/datasets/mnist``, else
    ``~/.cache/dipdefense/mnist``): a folder with the four IDX files or a torchvision root.
    """

    dataset_cls = torchvision.datasets.MNIST
    env_var = "DIPDEF_MNIST"
    system_dir = "/usr/share/datasets/mnist"
    classes = [str(i) for i in range(10)]

    def __init__(
        self, data_dir: str | None = None, download: bool = False, crop_padding: int = 2, flip: bool = False, **kwargs
    ) -> None:
        super().__init__(data_dir, download, crop_padding=crop_padding, flip=flip, **kwargs)
