"""Results files from the per-image records: results.json/csv/md and PNG plots."""

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from common.atomic_files import atomic_write, atomic_write_text
from evaluation.attack_specs import CLEAN, AttackRun
from evaluation.metrics import summarise

COLUMNS = [
    "attack",
    "eps",
    "n",
    "accuracy",
    "accuracy_ci95_low",
    "accuracy_ci95_high",
    "top5",
    "ssim",
    "mean_l2",
    "mean_linf",
    "attack_success",
    "flagged_share",
    "rejected_share",
    "accuracy_with_rejection",
    "seconds",
    "images_per_s",
]


def build_rows(records: list[dict[str, Any]], runs: list[AttackRun], num_classes: int) -> list[dict[str, Any]]:
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[r["attack"]].append(r)
    rows = []
    for run in runs:
        if by_run.get(run.id):
            row = {"attack": run.name, "variant": run.inline, "eps": run.eps}
            rows.append(row | summarise(by_run[run.id], num_classes))
    return rows


def detection_rows(records: list[dict[str, Any]], runs: list[AttackRun]) -> list[dict[str, Any]]:
    """Detector figures per attack on the balanced set {clean image: 0, its attacked version: 1}
    (paper 003, Table 4): accuracy at the detector's threshold, ROC-AUC, TPR and FPR.
    Needs records with a ``score`` and ``flagged`` (detectors and detector-gated defenses)
    and the ``clean`` run."""
    from torchmetrics.functional.classification import binary_auroc

    clean = {r["index"]: r for r in records if r["attack"] == CLEAN and "score" in r}
    rows = []
    for run in runs:
        if run.id == CLEAN:
            continue
        attacked = [r for r in records if r["attack"] == run.id and "score" in r and r["index"] in clean]
        if not attacked:
            continue
        negatives = [clean[r["index"]] for r in attacked]
        scores = torch.tensor([r["score"] for r in negatives + attacked])
        truth = torch.tensor([0] * len(negatives) + [1] * len(attacked))
        flagged = torch.tensor([bool(r["flagged"]) for r in negatives + attacked])
        tpr = flagged[truth == 1].float().mean().item()
        fpr = flagged[truth == 0].float().mean().item()
        rows.append(
            {
                "attack": run.name,
                "variant": run.inline,
                "eps": run.eps,
                "n_pairs": len(attacked),
                "detection_accuracy": (flagged == truth.bool()).float().mean().item(),
                "roc_auc": binary_auroc(scores, truth).item(),
                "tpr": tpr,
                "fpr": fpr,
            }
        )
    return rows


def detection_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| attack | eps (/255) | pairs | detection accuracy | ROC-AUC | TPR | FPR |", "|" + " --- |" * 7]
    for r in rows:
        lines.append(
            f"| {display_name(r)} | {_eps_label(r['eps']) or '-'} | {r['n_pairs']} | {100 * r['detection_accuracy']:.1f}% | "
            f"{r['roc_auc']:.3f} | {100 * r['tpr']:.1f}% | {100 * r['fpr']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def rejection_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy of C(G(z*)), the share rejected, and the accuracy when a rejected attacked
    input counts as defended and a rejected clean one as wrong."""
    lines = ["| attack | eps (/255) | n | accuracy | rejected | accuracy with rejection |", "|" + " --- |" * 6]
    for r in rows:
        if r.get("rejected_share") is None:
            continue
        lines.append(
            f"| {display_name(r)} | {_eps_label(r['eps']) or '-'} | {r['n']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r['rejected_share']:.1f}% | {100 * r['accuracy_with_rejection']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def display_name(row: dict[str, Any]) -> str:
    """``pgd``, or ``pgd(steps=50)`` for a run with parameters written in the attack list."""
    return f"{row['attack']}({row['variant']})" if row.get("variant") else row["attack"]


def _eps_label(eps: float | None) -> str:
    return "" if eps is None else f"{eps * 255:.4g}"


def paper_table(rows: list[dict[str, Any]], metric: str, defense: str, percent: bool) -> str:
    """Paper 002's Table 1/2 shape: one column per attack, eps budgets joined by '/', and
    the mean over all cells (ACC / mean SSIM) at the end."""
    columns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        columns[display_name(row)].append(row)

    def fmt(v: float) -> str:
        return f"{100 * v:.1f}" if percent else f"{v:.3f}"

    header, cells, values = ["Defense"], [defense], []
    for attack, group in columns.items():
        budgets = "/".join(_eps_label(r["eps"]) for r in group if r["eps"] is not None)
        header.append(
            attack.upper() if attack == CLEAN else f"{attack.upper()} ({budgets})" if budgets else attack.upper()
        )
        cells.append("/".join(fmt(r[metric]) for r in group))
        values += [r[metric] for r in group]
    header.append("mean")
    cells.append(fmt(sum(values) / len(values)) if values else "")
    return "| " + " | ".join(header) + " |\n|" + " --- |" * len(header) + "\n| " + " | ".join(cells) + " |\n"


def detail_table(rows: list[dict[str, Any]]) -> str:
    head = "| attack | eps (/255) | n | accuracy | 95% CI | top-5 | SSIM | mean L2 | mean Linf | attack success | s/image | images/s |"
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        lines.append(
            f"| {display_name(r)} | {_eps_label(r['eps']) or '-'} | {r['n']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r.get('accuracy_ci95_low', 0):.1f}-{100 * r.get('accuracy_ci95_high', 1):.1f}% | "
            f"{100 * r['top5']:.1f}% | {r['ssim']:.3f} | {r['mean_l2']:.3f} | {r['mean_linf'] * 255:.2f}/255 | "
            f"{100 * r['attack_success']:.1f}% | {r['seconds'] / r['n']:.4f} | {ips} |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, header: dict[str, Any], rows: list[dict[str, Any]], detection: list[dict[str, Any]] | None = None
) -> None:
    extra = {"detection": detection} if detection else {}
    atomic_write_text(out / "results.json", json.dumps({**header, "rows": rows, **extra}, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    defense = header["defense"]
    md = [
        f"# Robustness of {header['victim']} on {header['dataset']} with defense `{defense}`\n",
        f"{header.get('command', '')}\n",
        "## Accuracy (%), shaped like paper 002 Table 1\n",
        paper_table(rows, "accuracy", defense, percent=True),
        "## SSIM(defended, clean), shaped like paper 002 Table 2\n",
        paper_table(rows, "ssim", defense, percent=False),
        "## All figures\n",
        detail_table(rows),
    ]
    if any(r.get("rejected_share") is not None for r in rows):
        md += ["## Rejection (INC, paper 004 Sec. 2.1: ||G(z*) - x||_2 >= eta)\n", rejection_table(rows)]
    if detection:
        md += ["## Detection (balanced: each clean image and its attacked version), as paper 003 Table 4\n"]
        md.append(detection_table(detection))
    atomic_write_text(out / "results.md", "\n".join(md))


def plot_accuracy_vs_eps(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    clean = next((r["accuracy"] for r in rows if r["attack"] == CLEAN), None)
    for r in rows:
        if r["eps"] is not None:
            series[display_name(r)].append((r["eps"] * 255, r["accuracy"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for attack, points in series.items():
        points = sorted(points)
        if clean is not None:
            points = [(0.0, clean), *points]
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=attack.upper())
    ax.set_xlabel("eps (/255, L-inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "accuracy_vs_eps.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_examples(out: Path, examples_dir: Path, run_ids: list[str], class_names: list[str] | None) -> Path | None:
    """One block per attack run: rows clean / adversarial / defended, each image titled with
    the victim's prediction (green: correct, red: wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [(rid, examples_dir / f"{rid.replace('/', '_')}.pt") for rid in run_ids]
    entries = [(rid, torch.load(p, weights_only=True)) for rid, p in entries if p.is_file()]
    if not entries:
        return None

    def name(k: int) -> str:
        return class_names[k] if class_names and k < len(class_names) else str(k)

    k = min(len(e["labels"]) for _, e in entries)
    fig, axes = plt.subplots(3 * len(entries), k, figsize=(1.6 * k, 1.9 * 3 * len(entries)), squeeze=False)
    for block, (rid, e) in enumerate(entries):
        for row, (what, preds) in enumerate(
            [("clean", e["labels"]), ("adversarial", e["adv_pred"]), ("defended", e["pred"])]
        ):
            for col in range(k):
                ax = axes[3 * block + row, col]
                image = e[what][col].float().clamp(0, 1)
                ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if image.shape[0] == 1 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                ok = int(preds[col]) == int(e["labels"][col])
                ax.set_title(name(int(preds[col])), fontsize=7, color="green" if ok else "red")
                if col == 0:
                    ax.set_ylabel(f"{rid}\n{what}" if row == 0 else what, fontsize=7)
    fig.tight_layout()
    path = out / "examples.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'attack':<12}{'eps/255':>8}{'n':>6}{'acc':>8}{'top5':>8}{'SSIM':>7}{'L2':>7}{'s/img':>9}"]
    for r in rows:
        lines.append(
            f"{display_name(r):<12}{_eps_label(r['eps']) or '-':>8}{r['n']:>6}{100 * r['accuracy']:>7.1f}%"
            f"{100 * r['top5']:>7.1f}%{r['ssim']:>7.3f}{r['mean_l2']:>7.3f}{r['seconds'] / r['n']:>9.4f}"
            + (f"  rejected {100 * r['rejected_share']:.1f}%" if r.get("rejected_share") is not None else "")
        )
    return "\n".join(lines)
