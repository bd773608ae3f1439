"""studies/shattered_summary.py: every attack of every run is a row, pairs are counted image by
image, and the worst case is per image over all rows."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import shattered_summary  # noqa: E402


def _record(index: int, attack: str, right: bool, history: str | None = None) -> dict:
    record = {"index": index, "attack": attack, "attack_name": attack.split("(")[0].split("@")[0], "label": 1}
    record["pred"] = 1 if right else 0
    return {**record, **({"history": history} if history else {}), "gradient": "bpda-identity"}


def test_rows_pairs_and_worst_case_from_two_runs_one_of_them_with_two_attacks(tmp_path):
    several = tmp_path / "several"
    several.mkdir()
    bpda, apgd = "bpda_pgd(resubmit=4)@8/255", "apgd(threat=adaptive)@8/255"
    lines = [_record(i, "clean", True) for i in range(4)]
    lines += [
        _record(i, bpda, right, h)
        for i, right, h in [(0, True, "11"), (1, True, "10"), (2, False, "00"), (3, True, "11")]
    ]
    lines += [_record(i, apgd, right) for i, right in [(0, False), (1, True), (2, True), (3, True)]]
    lines.append(_record(9, apgd, False))  # an image the other attacks lack: left out
    (several / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    archived = tmp_path / "archived"
    archived.mkdir()
    rule = [_record(i, "bpda_pgd(backward=rule)@8/255", i != 3, "1" if i != 3 else "0") for i in range(4)]
    (archived / "samples.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rule).encode()))

    table = shattered_summary.summarise([several, archived])
    assert table.startswith("4 images every attack has")
    # bpda: right on 3 after, 2 before (image 1 fell at its second iterate, yet the returned image is right)
    assert f"| {several} | {bpda} | bpda-identity | 2 / 4 | 3 / 4 (" in table
    assert f"| {several} | {apgd} | bpda-identity | 3 / 4 | 3 / 4 (" in table
    assert f"| {bpda} -> {apgd} | 1 | 1 | 1 |" in table
    assert "worst case over these attacks: 1 / 4 right" in table  # only image 1 survives all three


def test_a_run_with_only_clean_records_is_one_clear_error(tmp_path):
    (tmp_path / "samples.jsonl").write_text(json.dumps(_record(0, "clean", True)) + "\n")
    with pytest.raises(SystemExit, match="no attack records"):
        shattered_summary.summarise([tmp_path])


def test_a_survivors_run_counts_over_its_parents_images_and_needs_its_parent(tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir(), child.mkdir()
    bpda, apgd = "bpda_pgd@8/255", "apgd(threat=adaptive)@8/255"
    (parent / "samples.jsonl").write_text(
        "".join(json.dumps(_record(i, bpda, i < 3, "1" if i < 3 else "0")) + "\n" for i in range(10))
    )
    (parent / "run.json").write_text("{}")
    (child / "samples.jsonl").write_text("".join(json.dumps(_record(i, apgd, i == 0)) + "\n" for i in range(3)))
    (child / "run.json").write_text(json.dumps({"survivors_of": str(parent)}))

    table = shattered_summary.summarise([parent, child])
    assert table.startswith("3 images every attack has")  # the pairs: on the survivors
    assert f"on the 10 images of {parent}, each over the rows that have it" in table
    assert ": 1 / 10 right (" in table
    alone = shattered_summary.summarise([child])
    assert f"{child} attacked the survivors of {parent.resolve()}; give that run too" in alone
    with pytest.raises(SystemExit, match="no such run folder"):
        shattered_summary.summarise([tmp_path / "missing"])
