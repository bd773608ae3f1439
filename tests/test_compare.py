import csv
import json

import pytest

from dipdefense.common.errors import UserError
from dipdefense.evaluation import compare


def _results(defense, rows, worst=()):
    return {"defense": defense, "dataset": "CIFAR10", "num_samples": 10, "rows": rows, "worst_case": list(worst)}


def _row(attack, eps, threat, accuracy, ssim=0.9, variant="", **extra):
    return {"attack": attack, "variant": variant, "eps": eps, "threat_model": threat, "n": 10, "accuracy": accuracy,
            "accuracy_ci95_low": accuracy - 0.1, "accuracy_ci95_high": accuracy + 0.1, "ssim": ssim, **extra}  # fmt: skip


def test_runs_merge_into_one_table_with_threat_models_rejection_and_worst_case(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(_results("none", [
        _row("clean", None, "oblivious", 0.9),
        _row("pgd", 8 / 255, "oblivious", 0.1),
        _row("hopskipjump", None, "adaptive", 0.3, variant="queries=200,threat=adaptive"),
    ], [{"eps": 8 / 255, "threat_model": "all", "n": 10, "accuracy": 0.05}])))  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(_results("glow_gate", [
        _row("clean", None, "oblivious", 0.8, accuracy_with_rejection=0.85),
        _row("bpda_pgd", 8 / 255, "adaptive", 0.02, accuracy_with_rejection=0.07, ssim=0.5),
    ])))  # fmt: skip
    table = compare.main([str(tmp_path / "a"), str(tmp_path / "b.json"), "--out", str(tmp_path / "cmp")])
    header, _, first, second = table.splitlines()
    assert header == (
        "| run | defense | data | images | clean | pgd@8/255 (oblivious) | hopskipjump(queries=200) (adaptive) "
        "| bpda_pgd@8/255 (adaptive) | worst case@8/255 (all) |"
    )
    assert first == "| a | none | CIFAR10 | 10 | 90.0 | 10.0 | 30.0 | - | 5.0 |"
    assert second == "| tmp_path | glow_gate | CIFAR10 | 10 | 85.0 r | - | - | 7.0 r | - |".replace(
        "tmp_path", tmp_path.name
    )
    lines = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert len(lines) == 6
    assert {(r["run"], r["column"], r["accuracy"], r["with_rejection"]) for r in lines} >= {
        ("a", "pgd@8/255 (oblivious)", "0.1", "False"),
        (tmp_path.name, "bpda_pgd@8/255 (adaptive)", "0.07", "True"),
    }
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    ssim = compare.main(
        [str(tmp_path / "a"), str(tmp_path / "b.json"), "--metric", "ssim", "--out", str(tmp_path / "s")]
    )
    assert "| 0.500 |" in ssim and "worst case" not in ssim


def test_a_folder_without_results_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no results.json there"):
        compare.main([str(tmp_path), "--out", str(tmp_path / "cmp")])
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not an evaluate.py results.json"):
        compare.main([str(tmp_path), "--out", str(tmp_path / "cmp")])
    assert not (tmp_path / "cmp").exists()


def _run_with_records(folder, outcomes, gzipped=False):
    """A run folder whose records are right (True) or wrong per (column, image index)."""
    import gzip

    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_results("dip_stitch", [_row("clean", None, "oblivious", 0.5)])))
    lines = []
    for (attack, eps), right in outcomes.items():
        for index, ok in right.items():
            run_id = attack if eps is None else f"{attack}@{eps}/255"  # as evaluate.py names its runs
            threat = {"attack": run_id, "threat_model": "oblivious", "label": 3, "index": index}
            lines.append(json.dumps({**threat, "pred": 3 if ok else 4}))
    text = "\n".join(lines) + "\n"
    if gzipped:
        (folder / "samples.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (folder / "samples.jsonl").write_text(text)


def test_paired_counts_images_each_run_alone_gets_right_with_an_exact_sign_test(tmp_path):
    # Clean: the other run fixes images 0-4 and breaks none (two-sided p = 2 / 2^5); PGD: one each way.
    # Image 9 is only in the reference, so it is left out of the pairs.
    reference = {("clean", None): {i: i >= 5 for i in range(10)}, ("pgd", 8): {0: True, 1: False, 9: True}}
    other = {("clean", None): {i: True for i in range(9)}, ("pgd", 8): {0: False, 1: True}}
    _run_with_records(tmp_path / "ref", reference)
    _run_with_records(tmp_path / "new", other, gzipped=True)
    table = compare.main(["--paired", str(tmp_path / "ref"), str(tmp_path / "new"), "--out", str(tmp_path / "p")])
    rows = table.splitlines()[2:]
    assert rows[0] == "| new | ref | clean | 9 | 44.4% | 100.0% | +5 / -0 | 0.0625 |"
    assert rows[1] == "| new | ref | pgd@8/255 (oblivious) | 2 | 50.0% | 50.0% | +1 / -1 | 1 |"
    assert (tmp_path / "p" / "paired.md").read_text().startswith(table)


def test_paired_needs_two_runs_with_records_on_one_sample(tmp_path):
    _run_with_records(tmp_path / "ref", {("clean", None): {0: True}})
    with pytest.raises(UserError, match="--paired needs two runs or more"):
        compare.main(["--paired", str(tmp_path / "ref"), "--out", str(tmp_path / "p")])
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "results.json").write_text(json.dumps(_results("none", [])))
    with pytest.raises(UserError, match="no samples.jsonl \\(or samples.jsonl.gz\\) there"):
        compare.main(["--paired", str(tmp_path / "ref"), str(tmp_path / "bare"), "--out", str(tmp_path / "p")])
    _run_with_records(tmp_path / "other", {("clean", None): {5: True}})
    with pytest.raises(UserError, match="share no \\(image, attack\\)"):
        compare.main(["--paired", str(tmp_path / "ref"), str(tmp_path / "other"), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()
