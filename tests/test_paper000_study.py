"""studies/paper000_table1.py: paper 000 Table 1's shape from two evaluate.py runs per victim."""

import json

import pytest

from dipdefense.common.errors import UserError
from tests.conftest import REPO


def _paper000_study():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper000_table1", REPO / "studies" / "paper000_table1.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_paper000_study_writes_table1_beside_the_papers_figures(tiny_victim, cifar_batches_dir, tmp_path, capsys):
    study = _paper000_study()
    out = tmp_path / "table1"
    tiny_dip = "{network: small, iterations: 12, observe_every: 2, t0: 0, tau: 0.0, dip_batch: 3}"
    argv = ["--out", str(out), "--victims", f"vgg16={tiny_victim},vit={tmp_path / 'absent.ckpt'}"]
    argv += ["--num-samples", "3", "--data-dir", str(cifar_batches_dir), "--"]
    argv += ["--batch-size", "3", "--defense_params.dip_stitch", tiny_dip]
    study.main(argv)
    assert "vit: no checkpoint at" in capsys.readouterr().err  # skipped, with the command that trains it
    md = (out / "results.md").read_text()
    assert "| vgg16 | " in md and "| vgg16 + dip_stitch | " in md and "| vit" not in md
    assert "0.87 / 0.82 / 0.92 / 0.92 | 3 |" in md and "0.27 / 0.14 / 0.15 / 0.19 | 3 |" in md
    rows = json.loads((out / "results.json").read_text())["rows"]["vgg16"]
    for setup in ("none", "defended"):
        assert [r["attack"] for r in rows[setup]] == ["clean", "pgd", "fgsm", "bim"]
        assert all(r["n"] == 3 for r in rows[setup])
    assert (out / "vgg16_defended" / "samples.jsonl").is_file()
    run = json.loads((out / "vgg16_defended" / "results.json").read_text())
    assert "--attack_params.pgd.steps 4" in run["command"]  # the authors' PGD: 4 steps of 2/255


def test_paper000_study_refuses_bad_victim_lists(tmp_path):
    study = _paper000_study()
    with pytest.raises(UserError, match=r"'vgg16' is not NAME=SPEC"):
        study.main(["--victims", "vgg16", "--out", str(tmp_path)])
    with pytest.raises(UserError, match=r"no victim checkpoint at hand: vgg16: python train.py -c victim_cifar_vgg16"):
        study.main(["--victims", f"vgg16={tmp_path / 'none.ckpt'}", "--out", str(tmp_path)])
