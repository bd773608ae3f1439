"""studies/dipdefend_arms.py: the report pairs each arm with the paper arm image by image."""

import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[1] / "studies"
sys.path.insert(0, str(STUDIES))

import dipdefend_arms  # noqa: E402


def _result(clean: str, pgd: str) -> dict:
    def part(correct: str) -> dict:
        return {
            "accuracy": correct.count("1") / len(correct),
            "ssim": 0.9,
            "correct": correct,
            "picked_iteration_median": 120,
            "picked_iteration_quartiles": [80.0, 120.0, 300.0],
        }

    return {"clean": part(clean), "pgd": part(pgd)}


def test_report_pairs_arms_with_the_paper_arm():
    results = {"paper": _result("1100", "0000"), "pad_zero": _result("1011", "1111")}
    text = dipdefend_arms.report(results)
    row = next(line for line in text.splitlines() if line.startswith("| pad_zero "))
    # clean: +2 (images 3, 4) / -1 (image 2); PGD: +4 / -0, p = 2 * 1/16
    assert "75.0% | 100.0%" in row
    assert "+2 / -1 (p = 1.00)" in row and "+4 / -0 (p = 0.12)" in row
    assert "| init_default |" in text and "not run" in text
