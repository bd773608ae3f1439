"""--survivors-of: a run on the images an earlier run left right, and the worst case over both."""

import json

import pytest

import evaluate
from dipdefense.common.errors import UserError
from dipdefense.evaluation.sample_log import read_run_records
from dipdefense.evaluation.survivors import cascade_summary, survivor_indices

MANIFEST = {"dataset": "CIFAR10", "victim_sha256": "v", "defense": "dip_inc", "defense_params": {"threshold": 0.1}}


def _record(index, attack, pred, label=1, **extra):
    return {"index": index, "attack": attack, "pred": pred, "label": label, **extra}


def _parent(folder, records, **manifest):
    folder.mkdir()
    attacks = [{"id": "clean", "params": {}}, {"id": "pgd@8/255", "params": {}}]
    (folder / "run.json").write_text(json.dumps({**MANIFEST, "attacks": attacks, **manifest}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_survivors_are_the_finished_images_right_under_every_attack_in_the_runs_order(tmp_path):
    parent = _parent(
        tmp_path / "parent",
        [
            _record(7, "clean", 1),
            _record(3, "clean", 1),
            _record(9, "clean", 1),
            _record(4, "clean", 0),  # wrong before any attack
            _record(7, "pgd@8/255", 1),
            _record(3, "pgd@8/255", 2),  # broken
            _record(4, "pgd@8/255", 1),
            _record(9, "pgd@8/255", 5, rejected=True),  # refused by the defense: defended, as the worst case counts it
            _record(2, "clean", 1),  # unfinished: no pgd record yet
        ],
    )
    assert survivor_indices(parent, MANIFEST) == ([7, 9], 4)


def test_the_cascades_worst_case_counts_the_parents_broken_images_and_bounds_unfinished_ones():
    records = [_record(7, "clean", 1), _record(7, "apgd", 1), _record(9, "clean", 1), _record(9, "apgd", 4)]
    done = cascade_summary("runs/parent", parent_images=10, survivors=2, records=records)
    assert done["right"] == 1 and done["worst_case_accuracy"] == pytest.approx(0.1) and "upper_bound" not in done
    partial = cascade_summary("runs/parent", parent_images=10, survivors=3, records=records)
    assert partial["worst_case_accuracy"] == pytest.approx(0.2) and partial["upper_bound"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda tmp: tmp / "missing", r"no such run folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", r"no readable run.json there"),
        (
            lambda tmp: _parent(tmp / "other", [_record(1, "clean", 1)], defense="dip_stitch"),
            r"that run's defense differ from this run's; .*it ran 'dip_stitch', this runs 'dip_inc'",
        ),
        (
            lambda tmp: _parent(tmp / "params", [_record(1, "clean", 1)], defense_params={"threshold": 0.2}),
            r"that run's defense_params differ",
        ),
        (lambda tmp: _parent(tmp / "unfinished", [_record(1, "clean", 1)]), r"no image has a record of every attack"),
    ],
)
def test_a_parent_that_cannot_give_survivors_is_one_clear_error(setup, message, tmp_path):
    with pytest.raises(UserError, match=message):
        survivor_indices(setup(tmp_path), MANIFEST)


def _args(tiny_victim, data_dir, out, *extra):
    return ["--victim", str(tiny_victim), "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "4", *extra]


def test_evaluate_attacks_only_the_survivors_and_reports_the_worst_case_over_both_runs(
    tiny_victim, cifar_batches_dir, tmp_path
):
    parent, child = tmp_path / "parent", tmp_path / "child"
    evaluate.main(_args(tiny_victim, cifar_batches_dir, parent, "--attacks", "clean", "--num-samples", "30"))
    clean_right = [r["index"] for r in read_run_records(parent) if r["pred"] == r["label"]]
    assert clean_right, "the seeded tiny victim gets some of the 30 images right"
    attacks = ("--attacks", "clean,fgsm", "--eps", "8", "--survivors-of", str(parent))
    evaluate.main(_args(tiny_victim, cifar_batches_dir, child, *attacks))
    records = read_run_records(child)
    assert sorted({r["index"] for r in records}) == sorted(clean_right)
    manifest = json.loads((child / "run.json").read_text())
    assert manifest["survivors_of"] == str(parent) and manifest["num_samples"] == len(clean_right)
    by_image = {}
    for r in records:
        by_image.setdefault(r["index"], []).append(r["pred"] == r["label"])
    cascade = json.loads((child / "results.json").read_text())["survivors_of"]
    assert cascade["parent_images"] == 30 and cascade["survivors"] == len(clean_right)
    assert cascade["worst_case_accuracy"] == pytest.approx(sum(map(all, by_image.values())) / 30)
    assert "The cascade" in (child / "results.md").read_text()
    first = evaluate.main(_args(tiny_victim, cifar_batches_dir, tmp_path / "first", *attacks, "--num-samples", "1"))
    assert first[0]["n"] == 1
    capped = json.loads((tmp_path / "first" / "results.json").read_text())["survivors_of"]
    assert capped["survivors"] == len(clean_right) and capped["attacked"] == 1
    assert capped.get("upper_bound") == (len(clean_right) > 1)
    with pytest.raises(UserError, match=r"--survivors-of .*defense, defense_params differ"):
        evaluate.main(
            _args(tiny_victim, cifar_batches_dir, tmp_path / "x", *attacks, "--defense", "dip_inc(iterations=2)")
        )
