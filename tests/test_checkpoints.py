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
