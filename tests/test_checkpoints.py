import pickle

import pytest
import torch

from dipdefense.common.checkpoint_io import load_checkpoint, save_checkpoint
from dipdefense.common.errors import CheckpointError
from dipdefense.nets import build_classifier, load_classifier

CONFIG = {"arch": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 32, "mean": "cifar10", "std": None}


def _export(path):
    torch.manual_seed(0)
    model = build_classifier(**CONFIG).eval()
    save_checkpoint(path, "victim", CONFIG, model.state_dict(), {"test/acc": 0.5})
    return model


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _export(tmp_path / "v.ckpt")
    loaded = load_classifier(tmp_path / "v.ckpt")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training and loaded.checkpoint_metrics == {"test/acc": 0.5}
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.ckpt"):
        load_classifier(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint", "truncated"])
def test_corrupted_file(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        _export(path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "dipdefense", "kind": "victim", "state_dict": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused by weights_only loading"):
        load_classifier(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_wrong_kind_and_wrong_architecture(tmp_path):
    save_checkpoint(tmp_path / "ae.ckpt", "autoencoder", {}, {})
    with pytest.raises(CheckpointError, match="is a 'autoencoder' checkpoint, expected a 'victim'"):
        load_classifier(tmp_path / "ae.ckpt")
    model = build_classifier("resnet32")
    save_checkpoint(tmp_path / "mismatch.ckpt", "victim", CONFIG, model.state_dict())
    with pytest.raises(CheckpointError, match="weights do not fit the victim \\({'arch': 'resnet20'"):
        load_classifier(tmp_path / "mismatch.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="found keys \\['weights'\\]"):
        load_checkpoint(tmp_path / "other.pt", "victim")


@pytest.mark.parametrize(("claimed", "built"), [("vgg16", "vit_small"), ("vit_small", "vgg16"), ("vgg16", "resnet20")])
def test_paper000_victims_refuse_another_architectures_weights(claimed, built, tmp_path):
    """Paper 000's victims are checked like the others: weights of one network under another's
    config stop with one line naming the config."""
    config = {"arch": claimed, "num_classes": 10, "in_channels": 3, "mean": "cifar10"}
    path = tmp_path / f"{built}_as_{claimed}.ckpt"
    save_checkpoint(path, "victim", config, build_classifier(built).state_dict())
    with pytest.raises(CheckpointError, match=rf"weights do not fit the victim \({{'arch': '{claimed}'") as err:
        load_classifier(path)
    assert "\n" not in str(err.value) and "missing" in str(err.value) and "unexpected" in str(err.value)


def test_a_class_count_mismatch_names_the_shapes(tmp_path):
    ten = {"arch": "resnet20", "num_classes": 10, "in_channels": 3, "mean": "cifar10"}
    path = tmp_path / "five_classes.ckpt"
    save_checkpoint(path, "victim", ten, build_classifier("resnet20", num_classes=5).state_dict())
    with pytest.raises(
        CheckpointError, match=r"shapes differ in 2 \(file vs model: 1.fc.weight \(5, 64\) vs \(10, 64\)"
    ):
        load_classifier(path)
