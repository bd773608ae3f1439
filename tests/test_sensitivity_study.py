"""studies/dip_stitch_sensitivity.py picks its images from the part of the training split the
victim was held out from, or (for issue 12's memorised-images comparison) from the part it was
trained on: the same split the victim's datamodule makes."""

import sys
from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule
from datamodules.in_memory import UInt8ImageDataset

STUDIES = Path(__file__).resolve().parents[1] / "studies"
sys.path.insert(0, str(STUDIES))

import dip_stitch_sensitivity  # noqa: E402


@pytest.fixture
def numbered_training_split(monkeypatch):
    """A 6,000-image training split whose pixel value is the image's index mod 256, and label its index."""
    n = 6000
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    split = UInt8ImageDataset(images, torch.arange(n))
    monkeypatch.setattr(CIFAR10DataModule, "load_split", lambda self, train: split)
    return split


def test_pools_match_the_victims_validation_and_training_parts(numbered_training_split):
    datamodule = CIFAR10DataModule(val_size=5000, seed=0)
    datamodule.setup("fit")
    val = set(datamodule.val_set.indices)
    _, held_labels, held = dip_stitch_sensitivity.pick_images(64, seed=1, pool="held_out")
    _, trained_labels, trained = dip_stitch_sensitivity.pick_images(64, seed=1, pool="trained")
    assert set(held.tolist()) <= val
    assert not set(trained.tolist()) & val
    assert len(set(trained.tolist())) == 64
    assert torch.equal(held_labels, held) and torch.equal(trained_labels, trained)


def test_unknown_pool_is_refused(numbered_training_split):
    with pytest.raises(ValueError, match="accepted: held_out, trained"):
        dip_stitch_sensitivity.pick_images(4, seed=1, pool="test")
