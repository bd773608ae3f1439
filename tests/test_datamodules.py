import tarfile

import numpy as np
import pytest
import torch

from datamodules import CIFAR10DataModule, FashionMNISTDataModule, ImageNetValDataModule, MNISTDataModule
from datamodules.augment import random_crop_flip
from dipdefense.common.errors import DataNotFoundError
from tests.conftest import random_images, write_idx


def _first_batch(loader):
    return next(iter(loader))


def test_cifar_torchvision_batches_load_in_unit_range(cifar_batches_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar_batches_dir), batch_size=8, val_size=10)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 90 and len(dm.val_set) == 10 and len(dm.test_set) == 30
    images, labels = _first_batch(dm.test_dataloader())
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Pixel (c, y, x) of CIFAR's row layout [N, 3072] = R plane, G plane, B plane.
    expected = random_images(30, seed=5)[0]
    assert torch.equal((images[0] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    assert labels.tolist() == [i % 10 for i in range(8)]


def test_cifar_image_folder_and_archive_agree(cifar_folder_dir, cifar_folder_archive):
    from_dir = CIFAR10DataModule(data_dir=str(cifar_folder_dir), val_size=5)
    from_tar = CIFAR10DataModule(data_dir=str(cifar_folder_archive), val_size=5)
    a, b = from_dir.load_split(train=False), from_tar.load_split(train=False)
    assert len(a) == 20 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.labels.tolist() == [c for c in range(10) for _ in range(2)]  # CIFAR-10 class order


def test_train_val_split_is_seeded_and_disjoint(cifar_batches_dir):
    def split(seed):
        dm = CIFAR10DataModule(data_dir=str(cifar_batches_dir), val_size=10, seed=seed)
        dm.setup("fit")
        return dm.train_set.indices, dm.val_set.indices

    train, val = split(0)
    assert split(0) == (train, val) and split(1) != (train, val)
    assert not set(train) & set(val) and len(set(train) | set(val)) == 100


def test_env_var_is_used_when_config_leaves_data_dir_unset(cifar_batches_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DIPDEF_CIFAR10", str(cifar_batches_dir))
    assert CIFAR10DataModule().data_dir == cifar_batches_dir
    assert CIFAR10DataModule(data_dir=str(tmp_path)).data_dir == tmp_path  # config/CLI value wins


@pytest.mark.parametrize("make_bad", ["missing", "empty", "wrong_classes"])
def test_bad_cifar_dir_gives_one_clear_error(tmp_path, make_bad):
    target = tmp_path / "nowhere"
    if make_bad != "missing":
        (target / "train").mkdir(parents=True)
        (target / "test").mkdir()
    if make_bad == "wrong_classes":
        (target / "train" / "cats_and_dogs").mkdir()
    dm = CIFAR10DataModule(data_dir=str(target))
    with pytest.raises(DataNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(target) in message
    if make_bad == "missing":
        assert "cifar-10-batches-py" in message and "DIPDEF_CIFAR10" in message


def test_corrupt_cifar_batch_is_reported(cifar_batches_dir):
    (cifar_batches_dir / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="test_batch is not a CIFAR python batch"):
        CIFAR10DataModule(data_dir=str(cifar_batches_dir)).load_split(train=False)


def test_fashion_mnist_reads_debian_gz_idx_files(idx_dir):
    dm = FashionMNISTDataModule(data_dir=str(idx_dir), val_size=10, batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 50 and len(dm.test_set) == 20
    images, labels = _first_batch(dm.test_dataloader())
    assert images.shape == (4, 1, 28, 28)
    expected = random_images(20, (28, 28), seed=20)[:4]
    assert torch.equal((images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    assert labels.tolist() == [0, 1, 2, 3]


def test_mnist_reads_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", random_images(n, (28, 28)), compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    assert len(dm.load_split(train=False)) == 10 and dm.flip is False


def test_bad_idx_files(idx_dir, tmp_path):
    with pytest.raises(DataNotFoundError, match="FashionMNIST not found at .*IDX files"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "empty")).load_split(train=True)
    (idx_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        FashionMNISTDataModule(data_dir=str(idx_dir)).load_split(train=False)


def test_imagenet_folder(tmp_path):
    from PIL import Image

    for wnid in ("n01440764", "n01443537"):
        (tmp_path / wnid).mkdir()
        Image.fromarray(random_images(1, (300, 400, 3))[0]).save(tmp_path / wnid / "a.JPEG")
    dm = ImageNetValDataModule(data_dir=str(tmp_path), batch_size=2, num_workers=0, expected_classes=2)
    dm.setup("test")
    images, labels = _first_batch(dm.test_dataloader())
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [0, 1] and images.max() <= 1
    with pytest.raises(DataNotFoundError, match="expected 1000"):
        ImageNetValDataModule(data_dir=str(tmp_path)).setup("test")
    with pytest.raises(DataNotFoundError, match="ImageNet validation folder not found"):
        ImageNetValDataModule(data_dir=str(tmp_path / "missing")).setup("test")


def test_random_crop_flip_returns_a_window_of_the_padded_image():
    images = torch.rand(16, 3, 8, 8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        windows = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < 16
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)


def test_archive_extraction_is_atomic(cifar_folder_archive, monkeypatch):
    from dipdefense.common import data_paths

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "extractall", boom)
    with pytest.raises(OSError):
        data_paths.extract_archive(cifar_folder_archive)
    assert not list((data_paths.cache_root() / "extracted").glob("cifar10*"))  # nothing half-written
    monkeypatch.undo()
