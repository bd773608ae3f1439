"""studies/seed_consistency.py: a DIP defense's clean verdicts over seeds."""

import gzip
import importlib.util
import json
import math
import shutil

import pytest

from dipdefense.common.errors import UserError
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("seed_consistency", REPO / "studies" / "seed_consistency.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_summary_of_known_verdicts():
    verdicts = {
        0: {1: True, 2: True, 3: False, 4: True},
        1: {1: True, 2: False, 3: False, 4: True},
        2: {1: True, 2: True, 3: False, 4: False, 9: True},  # image 9: not in every seed, left out
    }
    s = study.summarise(verdicts)
    assert s["images"] == 4 and s["seeds"] == [0, 1, 2]
    assert s["accuracy"] == {0: 0.75, 1: 0.5, 2: 0.5}
    assert s["right_in_k_seeds"] == {0: 1, 1: 0, 2: 2, 3: 1}
    assert s["flipping_images"] == 2 and s["right_under_every_seed"] == 0.25 and s["right_under_some_seed"] == 0.75
    # pairs (0,1): image 2 differs; (0,2): image 4; (1,2): images 2 and 4 -> (1 + 1 + 2) / 3 / 4
    assert math.isclose(s["pairwise_disagreement"], 4 / 12)
    assert math.isclose(s["sd"], 0.1443375672974065)


def test_seed_goes_into_the_defense_spec():
    assert study.defense_with_seed("dip_stitch(pad=zero)", 3) == "dip_stitch(pad=zero,seed=3)"
    assert study.defense_with_seed("dipdefend", 2) == "dipdefend(seed=2)"
    assert study.defense_with_seed("dip_stitch()", 1) == "dip_stitch(seed=1)"
    with pytest.raises(UserError, match="leave the seed out"):
        study.defense_with_seed("dip_stitch(seed=1)", 2)


def test_two_seeds_end_to_end_and_a_reused_run(tiny_victim, cifar_batches_dir, tmp_path):
    tiny_dip = "{network: small, iterations: 12, observe_every: 2, t0: 0, tau: 0.0, dip_batch: 3}"
    common = ["--defense", "dip_stitch", "--num-samples", "3", "--batch-size", "3"]
    common += ["--data-dir", str(cifar_batches_dir), "--runs-dir", str(tmp_path / "runs")]
    after = ["--", "--victim", str(tiny_victim), "--defense_params.dip_stitch", tiny_dip]
    study.main([*common, "--seeds", "0,1", "--out", str(tmp_path / "a"), *after])
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["images"] == 3 and first["seeds"] == [0, 1] and len(first["verdicts"]) == 3
    assert all(len(v) == 2 and set(v) <= {"0", "1"} for v in first["verdicts"].values())
    assert "| clean accuracy |" in (tmp_path / "a.md").read_text()
    # seed 0 read back from its run: the same figures without a fit
    reuse = ["--reuse", f"0={tmp_path / 'runs' / 'seed0'}"]
    study.main([*common, "--seeds", "1", *reuse, "--out", str(tmp_path / "b"), *after])
    second = json.loads((tmp_path / "b.json").read_text())
    assert {k: second[k] for k in ("accuracy", "right_in_k_seeds")} == {
        "accuracy": {"0": first["accuracy"]["0"], "1": first["accuracy"]["1"]},
        "right_in_k_seeds": first["right_in_k_seeds"],
    }
    # an archived run (run.json and samples.jsonl.gz, as studies/adaptive_eval/runs/ keeps them)
    archived = tmp_path / "archived"
    archived.mkdir()
    shutil.copy(tmp_path / "runs" / "seed0" / "run.json", archived / "run.json")
    with (
        open(tmp_path / "runs" / "seed0" / "samples.jsonl", "rb") as f,
        gzip.open(archived / "samples.jsonl.gz", "wb") as g,
    ):
        g.write(f.read())
    assert study.clean_verdicts(archived, 0) == study.clean_verdicts(tmp_path / "runs" / "seed0", 0)
    with pytest.raises(UserError, match="that run's defense seed is 0, not 2"):
        study.main([*common, "--seeds", "1", "--reuse", f"2={tmp_path / 'runs' / 'seed0'}", *after])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1,1"], "give distinct integers"),
        (["--seeds", "a"], "give integers"),
        (["--seeds", "1"], "at least two seeds"),
        (["--seeds", "0,1", "--reuse", "0=x"], r"seed\(s\) \[0\] are both run and reused"),
        (["--reuse", "zero"], "give SEED=RUN_FOLDER"),
    ],
)
def test_bad_arguments(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        study.main([*argv, "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "runs").exists()
