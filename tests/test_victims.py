"""Any classifier as the victim (issue 44): the spec kinds through evaluate.py, the input contract,
the manifest and cache identity, and one clear error per bad input with nothing written."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import evaluate
from dipdefense.common.checkpoint_io import file_sha256
from dipdefense.common.errors import CheckpointError, UserError
from dipdefense.evaluation.sample_log import read_records
from dipdefense.nets import load_victim
from dipdefense.nets.victims import VICTIM_KINDS, state_sha256, victim_kind
from tests.conftest import REPO

RESNET20 = REPO / "checkpoints" / "victim_cifar_resnet20.ckpt"
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(data_dir: Path, out: Path, *args: str) -> list[dict]:
    base = ["--data-dir", str(data_dir), "--out", str(out), "--batch-size", "4", "--num-samples", "4"]
    return evaluate.main([*base, *args])


def test_spec_kinds():
    assert victim_kind("checkpoints/victim_cifar_resnet20.ckpt") == "checkpoint"
    assert victim_kind("timm:resnet18") == "timm" and victim_kind("torchvision:resnet18") == "torchvision"
    assert victim_kind("robustbench:L2/Standard") == "robustbench"
    assert victim_kind("mypackage.models:build") == "callable" and victim_kind("nets/my_net.py:build") == "callable"
    assert set(VICTIM_KINDS) == {"checkpoint", "callable", "timm", "torchvision", "robustbench"}


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_architectures_with_the_users_weights_run_and_are_recorded(
    library, cifar_batches_dir, tmp_path, capsys
):
    torch.manual_seed(0)
    if library == "timm":
        import timm

        model = timm.create_model("resnet18", num_classes=10)
        weights = tmp_path / "timm_resnet18.pt"
        torch.save(model.state_dict(), weights)
    else:
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        weights = tmp_path / "tv_resnet18.pth"
        torch.save({"model": model.state_dict(), "epoch": 3}, weights)  # a training script's checkpoint
    out = tmp_path / "run"
    spec = f"{library}:resnet18"
    _run(cifar_batches_dir, out, "--victim", spec, "--victim-weights", str(weights), "--victim-normalize", "cifar10",
         "--attacks", "clean,fgsm")  # fmt: skip
    source = json.loads((out / "run.json").read_text())["victim_source"]
    assert source["spec"] == spec and source["kind"] == library
    assert source["weights_sha256"] == file_sha256(weights)
    assert source["normalize"][0] == pytest.approx([0.4914, 0.4822, 0.4465])
    loaded = load_victim(spec, weights, "cifar10")
    assert json.loads((out / "run.json").read_text())["victim_sha256"] == state_sha256(loaded)
    assert isinstance(loaded[0], nn.Module) and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()((x - loaded[0].mean) / loaded[0].std), atol=1e-5)
    err = capsys.readouterr().err
    assert f"victim {spec}: " in err and "training mode" not in err  # the plan's first-chunk accuracy line
    # Other weights are another victim: its run folder refuses them, as it refuses another checkpoint.
    other = tmp_path / "other.pt"
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in loaded[1].state_dict().items()}, other)
    with pytest.raises(UserError, match=r"holds another run's records \(victim_sha256, victim_source differ\)"):
        _run(cifar_batches_dir, out, "--victim", spec, "--victim-weights", str(other), "--victim-normalize", "cifar10",
             "--attacks", "clean,fgsm")  # fmt: skip


def test_a_callable_wrapping_the_shipped_checkpoint_gives_its_records(cifar_batches_dir, tmp_path, capsys):
    module = tmp_path / "my_victims.py"
    module.write_text(
        "from dipdefense.nets import load_classifier\n\n\n"
        f"def resnet20():\n    model = load_classifier({str(RESNET20)!r})\n    return model.train()\n"
    )
    args = ("--attacks", "clean,fgsm,pgd(steps=3)", "--num-samples", "8")
    _run(cifar_batches_dir, tmp_path / "checkpoint", "--victim", str(RESNET20), *args)
    _run(cifar_batches_dir, tmp_path / "callable", "--victim", f"{module}:resnet20", *args)
    assert "was in training mode; it is evaluated in eval mode" in capsys.readouterr().err
    keep = ("index", "attack", "label", "clean_pred", "adv_pred", "pred", "l2", "linf")

    def records(run: str) -> list[tuple]:
        rows = read_records(tmp_path / run / "samples.jsonl")
        return sorted(tuple(r[k] for k in keep) for r in rows)

    assert records("checkpoint") == records("callable")
    manifest = json.loads((tmp_path / "callable" / "run.json").read_text())
    assert manifest["victim_source"]["kind"] == "callable"


class _Tiny(nn.Module):
    def __init__(self, classes: int = 10, side: int = 32) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * side * side, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        ("", ("--victim", "no_such.ckpt"), r"victim 'no_such.ckpt': no such checkpoint file.*timm:NAME"),
        ("import not_a_module_anywhere\n", ("--victim", "{file}:build"),
         r"does not import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
        ("def build():\n    return 3\n", ("--victim", "{file}:build"), r"returned a int, not an nn.Module"),
        ("", ("--victim", "{file}:missing"), r"has no callable 'missing'"),
        ("from tests.test_victims import _Tiny\n\ndef build():\n    return _Tiny(classes=5)\n",
         ("--victim", "{file}:build"), r"returned logits of shape \(2, 5\) for 2 images; .*10 classes"),
        ("from tests.test_victims import _Tiny\n\ndef build():\n    return _Tiny(side=28)\n",
         ("--victim", "{file}:build"), r"fails on the data set's images \(2 x \(3, 32, 32\) in \[0, 1\]\): RuntimeError"),
        ("", ("--victim", str(RESNET20), "--victim-weights", "{weights}"), r"a project checkpoint carries its weights"),
        ("", ("--victim", "timm:resnet18"), r"give its weights with --victim-weights FILE"),
        ("", ("--victim", "timm:no_such_net", "--victim-weights", "{weights}"), r"timm has no architecture"),
        ("", ("--victim", "torchvision:resnet18", "--victim-weights", "{weights}"),
         r"does not fit victim torchvision:resnet18: missing \['conv1.weight', .* unexpected \[.linear.weight."),
        ("", ("--victim", "timm:resnet18", "--victim-weights", "{weights}", "--victim-normalize", "svhn"),
         r"--victim-normalize 'svhn': accepted: cifar10"),
    ],
)  # fmt: skip
def test_bad_victims_are_one_line_before_anything_is_written(source, extra, message, cifar_batches_dir, tmp_path):
    file = tmp_path / "user_victims.py"
    file.write_text(source)
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": _Tiny().state_dict()}, weights)
    out = tmp_path / "out"
    args = [a.format(file=file, weights=weights) for a in extra]
    with pytest.raises(UserError, match=message):
        _run(cifar_batches_dir, out, *args)
    assert not out.exists()


def test_weights_file_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"garbage.pt is not a readable weights file"):
        load_victim("torchvision:resnet18", garbage)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match=r"expected a state dict"):
        load_victim("torchvision:resnet18", listed)


@pytest.fixture
def fake_robustbench(monkeypatch, tmp_path):
    """A stand-in for robustbench's model zoo API (its PyPI release does not import without
    AutoAttack from GitHub), to test our gating: unknown names, absent files, --download."""
    calls = []

    class Enum(str):
        def __new__(cls, value):
            return str.__new__(cls, value)

    zoo = types.ModuleType("robustbench.model_zoo")
    zoo.model_dicts = {"cifar10": {"Linf": {"Standard": {}, "Carmon2019Unlabeled": {}}, "L2": {"Standard": {}}}}
    enums = types.ModuleType("robustbench.model_zoo.enums")
    enums.BenchmarkDataset = types.SimpleNamespace(cifar_10="cifar10")
    enums.ThreatModel = Enum
    utils = types.ModuleType("robustbench.utils")

    def load_model(name, model_dir, dataset, threat_model):
        calls.append((name, model_dir, dataset, threat_model))
        return _Tiny().train()

    utils.load_model = load_model
    package = types.ModuleType("robustbench")
    for name, module in {"robustbench": package, "robustbench.model_zoo": zoo, "robustbench.model_zoo.enums": enums,
                         "robustbench.utils": utils}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_robustbench_names_are_checked_and_files_never_fetched_without_download(fake_robustbench, tmp_path):
    with pytest.raises(UserError, match=r"knows no CIFAR-10 Linf model 'Carmon2019'.*close: Carmon2019Unlabeled"):
        load_victim("robustbench:Carmon2019", victim_dir=tmp_path)
    with pytest.raises(UserError, match=r"threat 'Linfinity'; accepted: Linf, L2, corruptions"):
        load_victim("robustbench:Linfinity/Standard", victim_dir=tmp_path)
    absent = tmp_path / "cifar10" / "L2" / "Standard.pt"
    with pytest.raises(UserError, match=rf"{absent} is absent; put the file there or pass --download"):
        load_victim("robustbench:L2/Standard", victim_dir=tmp_path)
    assert fake_robustbench == []
    model = load_victim("robustbench:L2/Standard", victim_dir=tmp_path, download=True)
    assert fake_robustbench == [("Standard", str(tmp_path), "cifar10", "L2")] and not model.training
    with pytest.raises(UserError, match="RobustBench loads its own weights"):
        load_victim("robustbench:Standard", weights=tmp_path / "w.pt", victim_dir=tmp_path)


def test_robustbench_loads_a_zoo_model_from_its_local_file(tmp_path):
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as err:
        pytest.skip(f"robustbench does not import here ({err}); PyPI's release needs AutoAttack from GitHub")
    architecture = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]()
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": architecture.state_dict()}, path)
    model = load_victim("robustbench:Standard", victim_dir=tmp_path)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
