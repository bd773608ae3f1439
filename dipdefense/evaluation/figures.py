"""Rows as PNG figures: accuracy against eps, against the attack iteration (paper 002 Fig. 4) and
against the perturbation budget (Fig. 5), and the clean / attacked / defended examples.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from dipdefense.common.atomic_files import atomic_write
from dipdefense.evaluation.attack_specs import CLEAN
from dipdefense.evaluation.rows import display_name, eps_label


def plot_accuracy_vs_eps(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    clean = next((r["accuracy"] for r in rows if r["attack"] == CLEAN), None)
    for r in rows:
        if r["eps"] is not None and r["eps"] < 1:  # the unbounded check would squash the axis
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


def plot_iteration_curves(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    """Paper 002 Fig. 4's shape for one defense: accuracy against the attack iteration, one
    panel per eps; solid: any iterate (the attack keeps the first that fools), dashed: the
    iterate itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in rows if r.get("any_iterate_curve")]
    if not curves:
        return None
    eps_values = sorted({r["eps"] for r in curves})
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4.2 * len(eps_values), 3.6), squeeze=False)
    for ax, eps in zip(axes[0], eps_values, strict=True):
        for r in (r for r in curves if r["eps"] == eps):
            k = range(len(r["any_iterate_curve"]))
            (line,) = ax.plot(k, [100 * a for a in r["any_iterate_curve"]], marker="o", ms=3, label=display_name(r))
            ax.plot(k, [100 * a for a in r["iterate_curve"]], ls="--", color=line.get_color(), alpha=0.6)
        ax.set_title(f"L-inf {eps_label(eps)}/255")
        ax.set_xlabel("attack iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / "accuracy_vs_iteration.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_budget_curves(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    """Paper 002 Fig. 5's shape for one defense: accuracy against the perturbation budget,
    one panel per HopSkipJump run (query budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in rows if r.get("budget_curve")]
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, r in zip(axes[0], curves, strict=True):
        scale = 255 if r["budget_norm"] == "linf" else 1
        ax.plot([p[0] * scale for p in r["budget_curve"]], [100 * p[1] for p in r["budget_curve"]], marker="o", ms=3)
        ax.set_title(f"{display_name(r)} ({r['threat_model']})", fontsize=8)
        ax.set_xlabel("budget (/255, L-inf)" if scale == 255 else "budget (L2)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / "accuracy_vs_budget.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_examples(out: Path, examples_dir: Path, run_ids: list[str], class_names: list[str] | None) -> Path | None:
    """One block per attack run: rows clean (titled with the true label) / the victim's input,
    attacked or, for the clean run, not / defended, titled with the victim's prediction on it
    (green: correct, red: wrong)."""
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
                    # What each row is: the true label's image; the victim's input (the clean run's is
                    # not attacked); the defended image and the defended victim's answer.
                    label = ("clean (true label)", "not attacked" if rid == "clean" else "attacked", "defended")[row]
                    ax.set_ylabel(f"{rid}\n{label}" if row == 0 else label, fontsize=7)
    fig.tight_layout()
    path = out / "examples.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
