"""studies/dip_stitch_victims.py: issue 12's trace statistics and the steadiness figure from records."""

import gzip
import json
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "studies"))
import dip_stitch_victims  # noqa: E402


def _record(index, attack, label, pred, crossings, **labels):
    name = "clean" if attack == "clean" else "pgd"
    return {"index": index, "attack": attack, "attack_name": name, "label": label, "pred": pred,
            "crossings": crossings, **labels}  # fmt: skip


def test_trace_statistics_and_steadiness_over_the_images_every_run_holds(tmp_path):
    first, second = tmp_path / "resnet20", tmp_path / "fast"
    first.mkdir(), second.mkdir()
    rows = [
        _record(0, "clean", 1, 1, 0, label_t50=2, label_t100=1, label_t200=1),
        _record(0, "pgd@8/255", 1, 1, 3, label_t50=1, label_t100=1, label_t200=0),
        _record(1, "clean", 2, 0, 2, label_t50=2, label_t100=2, label_t200=2),
        _record(1, "pgd@8/255", 2, 0, 0, label_t50=0, label_t100=0, label_t200=0),
        _record(2, "clean", 3, 3, 0),  # only in this run: left out of the table
    ]
    with gzip.open(first / "samples.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (second / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    text = dip_stitch_victims.report([first, second])
    assert "(2 images every run holds)" in text
    assert "| resnet20 | 50.0% (1/2) | 50.0% (1/2) | 50.0% (1/2) | 50.0% (1/2) | 100.0% (1/1) |" in text
    assert "| fast | 50.0% (1/2) / 100.0% (2/2) / 100.0% (2/2) | 50.0% (1/2) / 50.0% (1/2) / 0.0% (0/2) |" in text
