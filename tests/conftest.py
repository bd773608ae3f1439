"""Fixtures that write small data sets in the real on-disk formats, and a host-sync guard."""

import contextlib
import gzip
import os
import pickle
import struct
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.cifar10 import CIFAR10_CLASSES  # noqa: E402

SHARED_CIFAR = Path(os.environ.get("DIPDEF_CIFAR10") or REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (small tensors: threads only cost; and DIP fits
    are compared bit for bit, which the thread count can change)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache and no data-location variables, unless it sets them."""
    monkeypatch.setenv("DIPDEF_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("DIPDEF_CIFAR10", "DIPDEF_FASHION_MNIST", "DIPDEF_MNIST", "DIPDEF_IMAGENET_VAL"):
        monkeypatch.delenv(var, raising=False)


TINY_VICTIM_CONFIG = {
    "arch": "small_cnn",
    "num_classes": 10,
    "in_channels": 3,
    "image_size": 32,
    "mean": "cifar10",
    "std": None,
}


@pytest.fixture
def tiny_victim(tmp_path) -> Path:
    """An untrained small CNN victim checkpoint (seeded), quick to attack."""
    from dipdefense.common.checkpoint_io import save_checkpoint
    from dipdefense.nets import build_classifier

    torch.manual_seed(0)
    path = tmp_path / "tiny_victim.ckpt"
    save_checkpoint(path, "victim", TINY_VICTIM_CONFIG, build_classifier(**TINY_VICTIM_CONFIG).state_dict())
    return path


def random_images(n: int, shape=(3, 32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture
def cifar_batches_dir(tmp_path) -> Path:
    """A torchvision-format ``cifar-10-batches-py`` with 5 x 20 training and 30 test images."""
    root = tmp_path / "cifar_tv"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, (name, n) in enumerate([(f"data_batch_{k}", 20) for k in range(1, 6)] + [("test_batch", 30)]):
        images = random_images(n, seed=i)
        entry = {
            "batch_label": name,
            "labels": [j % 10 for j in range(n)],
            "data": images.reshape(n, -1),
            "filenames": [],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return root


@pytest.fixture
def cifar_folder_dir(tmp_path) -> Path:
    """An image-folder CIFAR copy: train/<class>/*.jpg (4 each) and test/<class>/*.jpg (2 each)."""
    root = tmp_path / "cifar_folder"
    for split, per_class in (("train", 4), ("test", 2)):
        for c, name in enumerate(CIFAR10_CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for k, image in enumerate(random_images(per_class, seed=100 * c + (0 if split == "train" else 7))):
                write_jpeg(torch.from_numpy(image), str(d / f"{k:04d}.jpg"))
    return root


@pytest.fixture
def cifar_folder_archive(cifar_folder_dir, tmp_path) -> Path:
    archive = tmp_path / "cifar10-copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_folder_dir / "train", arcname="train")
        tar.add(cifar_folder_dir / "test", arcname="test")
    return archive


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX format: magic (0x0000, type 0x08 = uint8, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """Debian-style folder with the four gzipped IDX files: 60 train and 20 test 28x28 images."""
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", random_images(n, (28, 28), seed=n), compress=True)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, compress=True)
    return d


@pytest.fixture
def no_host_sync(monkeypatch: pytest.MonkeyPatch):
    """``with no_host_sync():`` fails on every tensor method that waits for the device (what a
    DIP rule observing a GPU fit must avoid): .item(), .tolist(), .cpu(), bool(), nonzero()."""

    def sync(*args, **kwargs):
        raise AssertionError("host sync while observing")

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "cpu", "__bool__", "nonzero"):
                patch.setattr(torch.Tensor, name, sync)
            yield

    return guard
