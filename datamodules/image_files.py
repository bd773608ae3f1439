"""Decoding image-folder and pickled-batch data sets into cached uint8 tensors."""

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from dipdefense.common.atomic_files import atomic_torch_save
from dipdefense.common.data_paths import cache_root
from dipdefense.common.errors import DataNotFoundError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(
    split_dir: Path, classes: list[str], image_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``split_dir/<class>/*`` into uint8 [N, C, H, W] and int64 labels (index in
    ``classes``), cached by folder path and contents so the JPEGs are decoded once."""
    folders = {p.name: p for p in class_folders(split_dir)}
    if sorted(folders) != sorted(classes):
        raise DataNotFoundError(f"{split_dir} has class folders {sorted(folders)}; expected exactly {classes}")
    files = {c: sorted(f for f in folders[c].iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    signature = f"{split_dir.resolve()}|{image_shape}|" + "|".join(
        f"{c}:{len(files[c])}:{folders[c].stat().st_mtime_ns}" for c in classes
    )
    cache_file = cache_root() / "tensors" / f"{split_dir.name}-{hashlib.sha1(signature.encode()).hexdigest()[:16]}.pt"
    if cache_file.is_file():
        cached = _read_decoded_cache(cache_file, len(sum(files.values(), [])), image_shape)
        if cached is not None:
            return cached
    mode = ImageReadMode.RGB if image_shape[0] == 3 else ImageReadMode.GRAY
    images = torch.empty((sum(len(v) for v in files.values()), *image_shape), dtype=torch.uint8)
    labels = torch.empty(len(images), dtype=torch.long)
    i = 0
    for label, c in enumerate(classes):
        for f in files[c]:
            try:
                image = decode_image(torch.from_numpy(np.fromfile(f, dtype=np.uint8)), mode=mode)
            except RuntimeError as err:
                raise DataNotFoundError(f"{f} is not a readable image ({err})") from None
            if tuple(image.shape) != image_shape:
                raise DataNotFoundError(f"{f} has shape {tuple(image.shape)}; this data set's images are {image_shape}")
            images[i], labels[i] = image, label
            i += 1
    if i == 0:
        raise DataNotFoundError(
            f"{split_dir} has class folders but no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    atomic_torch_save({"images": images, "labels": labels}, cache_file)
    return images, labels


def _read_decoded_cache(
    cache_file: Path, count: int, image_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached tensors, or None (with a warning naming the file) when the file is damaged
    or does not hold ``count`` images of ``image_shape``: it is then decoded afresh."""
    try:
        cached = torch.load(cache_file, weights_only=True)
        images, labels = cached["images"], cached["labels"]
        if images.dtype != torch.uint8 or tuple(images.shape) != (count, *image_shape) or labels.shape != (count,):
            raise ValueError(f"holds {tuple(images.shape)} {images.dtype}, expected {(count, *image_shape)} uint8")
    except Exception as err:  # a truncated zip, a pickle error, a missing key: all mean "rebuild"
        warnings.warn(f"decoded-image cache {cache_file} is damaged ({err}); decoding the images again", stacklevel=3)
        return None
    return images, labels


def load_pickled_batches(files: list[Path], image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR's python-pickle batches (dicts with ``data`` [N, 3072] uint8 and ``labels``).

    These files are pickles by format (as torchvision reads them); only point this at
    copies of the official release.
    """
    images, labels = [], []
    for f in files:
        if not f.is_file():
            raise DataNotFoundError(
                f"missing {f.name} in {f.parent} (cifar-10-batches-py holds data_batch_1..5 and test_batch)"
            )
        try:
            with open(f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, *image_shape)
            targets = entry.get("labels", entry.get("fine_labels"))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise DataNotFoundError(f"{f} is not a CIFAR python batch ({err.__class__.__name__}: {err})") from None
        images.append(torch.from_numpy(data))
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)
