"""Issue 39's paired table: BPDA-PGD runs through one defense with different backward passes,
each before and after resubmission, image by image on the images every run has, with sign
tests and Wilson intervals.

    python studies/shattered_summary.py runs/adaptive/dip_stitch_resubmit runs/adaptive/dip_stitch_rule16

Each argument is an evaluate.py run folder (or its samples.jsonl[.gz]); every attack in it but
``clean`` is a row (a run of several attacks, like ``dip_inc_shattered``, gives several). "before"
is the attack's any-iterate verdict (its ``history``; an attack without one, such as APGD, its
verdict on what it returned), "after" the defended victim's verdict on what it returned (after
resubmission where the run resubmitted). The worst case is per image over every row. A run made
with ``evaluate.py --survivors-of PARENT`` holds only the images PARENT left right; given both
(PARENT first), the worst case on PARENT's images counts each image over the rows that have it.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.evaluation.compare import load_records  # noqa: E402
from dipdefense.evaluation.metrics import wilson_interval  # noqa: E402


def records_of(path: Path) -> dict[str, dict[int, dict]]:
    """attack id -> image index -> record, for every attack of the run but ``clean``."""
    if not path.exists():
        raise SystemExit(f"{path}: no such run folder (or samples.jsonl[.gz])")
    rows = load_records(path if path.is_dir() else path.parent)  # samples.jsonl, or the archived .gz
    attacks: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["attack_name"] != "clean":
            attacks.setdefault(r["attack"], {}).setdefault(r["index"], r)
    return attacks


def summarise(paths: list[Path]) -> str:
    """The markdown tables: one row per (run, attack), pairwise sign tests, the worst case."""
    from scipy.stats import binomtest

    rows = {(str(path), attack): records for path in paths for attack, records in records_of(path).items()}
    if not rows:
        raise SystemExit("no attack records in " + ", ".join(map(str, paths)))
    common = sorted(set.intersection(*(set(r) for r in rows.values())))
    n = len(common)
    if not n:
        raise SystemExit("no image has a record of every attack; nothing to compare")
    verdicts = {}
    lines = [
        f"{n} images every attack has",
        "",
        "| run | attack | gradient | right before resubmission | right after (95% CI) |",
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    for (run, attack), records in rows.items():
        # An attack without per-iterate verdicts (APGD, oblivious PGD): its one verdict, on what it returned.
        before = {
            i: "0" not in records[i]["history"]
            if records[i].get("history")
            else records[i]["pred"] == records[i]["label"]
            for i in common
        }
        after = {i: records[i]["pred"] == records[i]["label"] for i in common}
        verdicts[(run, attack)] = after
        lo, hi = wilson_interval(sum(after.values()), n)
        lines.append(
            f"| {run} | {attack} | {records[common[0]].get('gradient')} | {sum(before.values())} / {n} | "
            f"{sum(after.values())} / {n} ({100 * lo:.0f}-{100 * hi:.0f}%) |"
        )
    lines += ["", "| pair (after) | fewer right in the second | more right in the second | sign test p |"]
    lines.append("| --- | --- | --- | --- |")
    keys = list(rows)
    for k, a in enumerate(keys):
        for b in keys[k + 1 :]:
            fewer = sum(verdicts[a][i] and not verdicts[b][i] for i in common)
            more = sum(verdicts[b][i] and not verdicts[a][i] for i in common)
            pvalue = binomtest(fewer, fewer + more, 0.5).pvalue if fewer + more else 1.0
            lines.append(f"| {a[1]} -> {b[1]} | {fewer} | {more} | {pvalue:.2g} |")
    worst = sum(all(v[i] for v in verdicts.values()) for i in common)
    lo, hi = wilson_interval(worst, n)
    lines += ["", f"worst case over these attacks: {worst} / {n} right ({100 * lo:.0f}-{100 * hi:.0f}%)"]
    return "\n".join(lines + cascade_lines(paths, rows))


def _survivors_of(path: Path) -> Path | None:
    """The run whose survivors ``path``'s run attacked (evaluate.py --survivors-of), resolved."""
    folder = path if path.is_dir() else path.parent
    manifest = folder / "run.json"
    parent = json.loads(manifest.read_text()).get("survivors_of") if manifest.is_file() else None
    return ((REPO / parent) if not Path(parent).is_absolute() else Path(parent)).resolve() if parent else None


def cascade_lines(paths: list[Path], rows: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    """Where a run attacked only what another left right (``--survivors-of``), the worst case on
    the first run's images counts each image over every row that has it: an image missing from
    a survivors run was already broken in its parent, which must be among the runs given."""
    folders = {(p if p.is_dir() else p.parent).resolve() for p in paths}
    cascades = {p: parent for p in paths if (parent := _survivors_of(p))}
    if not cascades:
        return []
    missing = [f"{p} attacked the survivors of {parent}; give that run too" for p, parent in cascades.items()
               if parent not in folders]  # fmt: skip
    if missing:
        return ["", *missing]
    first = [set(r) for (run, _), r in rows.items() if run == str(paths[0])]
    if not first:
        return ["", f"{paths[0]} has no attack records: give the parent run first"]
    base = sorted(set.intersection(*first))
    right = sum(all(r[i]["pred"] == r[i]["label"] for r in rows.values() if i in r) for i in base)
    lo, hi = wilson_interval(right, len(base))
    return [
        "",
        f"worst case over every row on the {len(base)} images of {paths[0]}, each over the rows that have it "
        f"(a survivors run holds what its parent left right): {right} / {len(base)} right "
        f"({100 * lo:.0f}-{100 * hi:.0f}%)",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    print(summarise([Path(r) for r in args.runs]))


if __name__ == "__main__":
    main()
