"""One table and one plot from many runs: ``python -m dipdefense.evaluation.compare runs/*`` (or ``dipdef-compare``).

Rows are runs (a defense on a data set and victim), columns are (attack, eps, threat model),
cells the accuracy in percent, shaped like paper 002 Table 1 (accuracy) and Table 2 (SSIM
of the defended image to the clean one). Where a defense may refuse an input (a detector,
INC past its threshold) the cell is the accuracy with rejection, marked ``r``: a refused
attacked image counts as defended, as the adaptive attacks assume. The worst case over every
attack at a budget (RobustBench's robust accuracy) is a column of its own. Writes
``comparison.md``, ``comparison.csv`` (one line per run and column, with n and the 95% CI)
and ``comparison.png`` into ``--out``.

``--paired`` compares every run with the first image by image instead (same images, same
attack): how many images each run gets right that the other does not, and the two-sided
exact sign test on those (McNemar's exact test). Two settings of one defense on the same
sample differ by a few points that unpaired 95% CIs cannot separate; the pairs can. Written
to ``paired.md``.
"""

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

from dipdefense.common.atomic_files import atomic_write, atomic_write_text
from dipdefense.common.errors import UserError, run_main
from dipdefense.evaluation.sample_log import read_records, record_defended

METRICS = ("accuracy", "ssim")


def load_results(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, results.json) for each run folder or results.json given, in the order given."""
    found = []
    for given in paths:
        path = Path(given)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"{given}: no results.json there; give run folders (runs/NAME) or results.json files")
        try:
            results = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is not readable JSON; rerun the evaluation that wrote it") from None
        if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
            raise UserError(f"{path} is not an evaluate.py results.json (it has no 'rows')")
        found.append((path.parent.name, results))
    if not found:
        raise UserError("no runs given; e.g. python -m dipdefense.evaluation.compare runs/*")
    return found


def column_of(row: dict[str, Any]) -> str:
    """``pgd@8/255 (oblivious)``, ``bpda_pgd(eot=4)@8/255 (adaptive)``, ``clean``."""
    variant = ",".join(v for v in (row.get("variant") or "").split(",") if v and not v.startswith("threat="))
    name = f"{row['attack']}({variant})" if variant else row["attack"]
    if row.get("eps") is not None:
        name += f"@{row['eps'] * 255:.4g}/255"
    return name if row["attack"] == "clean" else f"{name} ({row.get('threat_model', 'oblivious')})"


def cells_of(results: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """column -> {value, marked, n, low, high} of one run."""
    cells = {}
    for row in results["rows"]:
        with_rejection = row.get("accuracy_with_rejection")
        if metric == "accuracy":
            value = with_rejection if with_rejection is not None else row.get("accuracy")
            low, high = row.get("accuracy_ci95_low"), row.get("accuracy_ci95_high")
            if with_rejection is not None:
                low = high = None  # the CI in results.json is of the plain accuracy
        else:
            value, low, high = row.get("ssim"), None, None
        cells[column_of(row)] = {
            "value": value, "marked": with_rejection is not None and metric == "accuracy",
            "n": row.get("n"), "low": low, "high": high,
        }  # fmt: skip
    if metric == "accuracy":
        for row in results.get("worst_case") or []:
            name = f"worst case@{row['eps'] * 255:.4g}/255 ({row['threat_model']})"
            cells[name] = {
                "value": row["accuracy"], "marked": False, "n": row["n"],
                "low": row.get("accuracy_ci95_low"), "high": row.get("accuracy_ci95_high"),
            }  # fmt: skip
    return cells


def comparison(runs: list[tuple[str, dict[str, Any]]], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns in first-seen order (clean first), and one row per run."""
    columns: list[str] = []
    rows = []
    for label, results in runs:
        cells = cells_of(results, metric)
        columns += [c for c in cells if c not in columns]
        rows.append({"run": label, "defense": results.get("defense", "?"), "dataset": results.get("dataset", "?"),
                     "n": results.get("num_samples"), "cells": cells})  # fmt: skip
    columns.sort(key=lambda c: (c != "clean", c.startswith("worst case")))
    return columns, rows


def markdown(columns: list[str], rows: list[dict[str, Any]], metric: str) -> str:
    def show(cell: dict[str, Any] | None) -> str:
        if cell is None or cell["value"] is None:
            return "-"
        text = f"{100 * cell['value']:.1f}" if metric == "accuracy" else f"{cell['value']:.3f}"
        return text + (" r" if cell["marked"] else "")

    head = ["run", "defense", "data", "images", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [row["run"], row["defense"], row["dataset"], str(row["n"])]
        lines.append("| " + " | ".join(values + [show(row["cells"].get(c)) for c in columns]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(columns: list[str], rows: list[dict[str, Any]], metric: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "defense", "dataset", "column", metric, "with_rejection", "n", "ci95_low", "ci95_high"])
    for row in rows:
        for column in columns:
            cell = row["cells"].get(column)
            if cell is not None:
                writer.writerow([row["run"], row["defense"], row["dataset"], column, cell["value"], cell["marked"],
                                 cell["n"], cell["low"], cell["high"]])  # fmt: skip
    return buffer.getvalue()


def plot(path: Path, columns: list[str], rows: list[dict[str, Any]], metric: str) -> None:
    """Grouped bars: one group per column, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.2))
    for k, row in enumerate(rows):
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(columns))]
        values = [row["cells"].get(c, {}).get("value") for c in columns]
        ys = [(100 * v if metric == "accuracy" else v) if v is not None else 0 for v in values]
        ax.bar(xs, ys, width, label=f"{row['run']} ({row['defense']})")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)" if metric == "accuracy" else "SSIM to the clean image")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def load_records(path: Path) -> list[dict[str, Any]]:
    """A run's per-image records: ``samples.jsonl``, or the gzipped copy studies archive."""
    folder = path.parent if path.name == "results.json" else path
    if (folder / "samples.jsonl").is_file():
        return read_records(folder / "samples.jsonl")
    if (folder / "samples.jsonl.gz").is_file():
        return [json.loads(line) for line in gzip.decompress((folder / "samples.jsonl.gz").read_bytes()).splitlines()]
    raise UserError(f"{folder}: no samples.jsonl (or samples.jsonl.gz) there; --paired needs per-image records")


def record_column(record: dict[str, Any]) -> str:
    """``pgd@8/255 (oblivious)``: the record's attack run id (eps included) and threat model."""
    if record["attack"] == "clean":
        return "clean"
    return f"{record['attack']} ({record.get('threat_model', 'oblivious')})"


def paired_rows(runs: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Each run after the first against the first, per column, over the images both hold."""
    from scipy.stats import binomtest

    def outcomes(records: list[dict[str, Any]]) -> dict[str, dict[int, bool]]:
        table: dict[str, dict[int, bool]] = {}
        for r in records:
            table.setdefault(record_column(r), {})[int(r["index"])] = record_defended(r)
        return table

    (reference_label, reference), rows = runs[0], []
    base = outcomes(reference)
    for label, records in runs[1:]:
        for column, right in outcomes(records).items():
            shared = sorted(set(right) & set(base.get(column, {})))
            if not shared:
                continue
            gains = sum(right[i] and not base[column][i] for i in shared)
            losses = sum(base[column][i] and not right[i] for i in shared)
            rows.append({
                "run": label, "reference": reference_label, "column": column, "n": len(shared),
                "reference_accuracy": sum(base[column][i] for i in shared) / len(shared),
                "accuracy": sum(right[i] for i in shared) / len(shared), "gains": gains, "losses": losses,
                "p": binomtest(gains, gains + losses, 0.5).pvalue if gains + losses else 1.0,
            })  # fmt: skip
    if not rows:
        raise UserError("--paired: the runs share no (image, attack) with the first run; give runs on one sample")
    return rows


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | against | column | images | against's accuracy | run's accuracy | right only in run / only in against | sign test p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['reference']} | {r['column']} | {r['n']} | {100 * r['reference_accuracy']:.1f}% | "
            f"{100 * r['accuracy']:.1f}% | +{r['gains']} / -{r['losses']} | {r['p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (runs/NAME) or their results.json")
    p.add_argument("--metric", choices=METRICS, default="accuracy", help="cell value (default: accuracy)")
    p.add_argument("--out", default="comparison", help="folder for comparison.md/.csv/.png (default: comparison)")
    p.add_argument("--paired", action="store_true", help="image by image against the first run, with a sign test")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.paired:
        if len(args.runs) < 2:
            raise UserError("--paired needs two runs or more: the first is the reference")
        labels = [label for label, _ in load_results(args.runs)]
        runs = [(label, load_records(Path(given))) for label, given in zip(labels, args.runs, strict=True)]
        table = paired_markdown(paired_rows(runs))
        note = "Accuracy over the images both runs hold; a refused attacked input counts as defended."
        atomic_write_text(Path(args.out) / "paired.md", f"{table}\n{note}\n")
        print(table + "\n" + note + f"\nwritten: {args.out}/paired.md")
        return table
    columns, rows = comparison(load_results(args.runs), args.metric)
    table = markdown(columns, rows, args.metric)
    note = "Cells: accuracy in %; `r`: with rejection (a refused attacked input counts as defended)."
    if args.metric == "ssim":
        note = "Cells: mean SSIM of the defended image to the clean one (paper 002 Table 2)."
    out = Path(args.out)
    atomic_write_text(out / "comparison.md", f"{table}\n{note}\n")
    atomic_write_text(out / "comparison.csv", write_csv(columns, rows, args.metric))
    plot(out / "comparison.png", columns, rows, args.metric)
    print(table + "\n" + note)
    print(f"written: {out}/comparison.md, comparison.csv, comparison.png")
    return table


def entry() -> None:
    """The ``dipdef-compare`` console script."""
    run_main(main)


if __name__ == "__main__":
    entry()
