"""Issue 39's paired table: BPDA-PGD runs through one defense with different backward passes,
each before and after resubmission, image by image on the images every run has, with sign
tests and Wilson intervals.

    python studies/shattered_summary.py runs/adaptive/dip_stitch_resubmit runs/adaptive/dip_stitch_rule16

Each argument is an evaluate.py run folder (or its samples.jsonl[.gz]); from each, the records
of its iterate-judging attack (bpda_pgd / eot_pgd), or of APGD, are read. "before" is the attack's any-iterate
verdict (its ``history``), "after" the defended victim's verdict on what it returned (after
resubmission where the run resubmitted).
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.evaluation.metrics import wilson_interval  # noqa: E402


def records_of(path: Path) -> dict[int, dict]:
    if path.is_dir():
        path = path / "samples.jsonl" if (path / "samples.jsonl").is_file() else path / "samples.jsonl.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    iterate_judging = ("bpda_pgd", "eot_pgd")
    return {
        r["index"]: r
        for r in rows
        if (r["attack_name"] in iterate_judging and r.get("history")) or r["attack_name"] == "apgd"
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    from scipy.stats import binomtest

    runs = {str(Path(r)): records_of(Path(r)) for r in args.runs}
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    n = len(common)
    verdicts = {}
    print(f"{n} images every run has\n")
    print("| run | attack | gradient | right before resubmission | right after (95% CI) |")
    print("| --- | --- | --- | --- | --- |")
    for name, records in runs.items():
        # APGD keeps no per-iterate verdicts: its own is the one on what it returned.
        before = {
            i: "0" not in records[i]["history"]
            if "history" in records[i]
            else records[i]["pred"] == records[i]["label"]
            for i in common
        }
        after = {i: records[i]["pred"] == records[i]["label"] for i in common}
        verdicts[name] = after
        lo, hi = wilson_interval(sum(after.values()), n)
        first = records[common[0]]
        print(
            f"| {name} | {first['attack']} | {first.get('gradient')} | {sum(before.values())} / {n} | "
            f"{sum(after.values())} / {n} ({100 * lo:.0f}-{100 * hi:.0f}%) |"
        )
    names = list(runs)
    print("\n| pair (after) | fewer right in the second | more right in the second | sign test p |")
    print("| --- | --- | --- | --- |")
    for a in names:
        for b in names[names.index(a) + 1 :]:
            fewer = sum(verdicts[a][i] and not verdicts[b][i] for i in common)
            more = sum(verdicts[b][i] and not verdicts[a][i] for i in common)
            pvalue = binomtest(fewer, fewer + more, 0.5).pvalue if fewer + more else 1.0
            print(f"| {a} -> {b} | {fewer} | {more} | {pvalue:.2f} |")
    worst = sum(all(verdicts[name][i] for name in names) for i in common)
    lo, hi = wilson_interval(worst, n)
    print(f"\nworst case over these runs: {worst} / {n} right ({100 * lo:.0f}-{100 * hi:.0f}%)")


if __name__ == "__main__":
    main()
