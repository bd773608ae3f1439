"""Results files from the per-image records: results.json/csv/md and PNG plots."""

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dipdefense.common.atomic_files import atomic_write, atomic_write_text
from dipdefense.evaluation.attack_specs import ADAPTIVE, CLEAN, OBLIVIOUS, AttackRun
from dipdefense.evaluation.metrics import budget_curve, summarise, wilson_interval
from dipdefense.evaluation.sample_log import record_defended

COLUMNS = [
    "attack",
    "variant",
    "threat_model",
    "gradient",
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
    "last_iterate_accuracy",
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
            mine = by_run[run.id]
            gradient = mine[0].get("gradient") if run.threat == ADAPTIVE else None
            row = {"attack": run.name, "variant": run.inline, "threat_model": run.threat, "gradient": gradient}
            row |= {"eps": run.eps} | summarise(mine, num_classes)
            if run.name == "hopskipjump":
                norm = run.build().constraint
                grid = [k / 255 for k in range(26)] if norm == "linf" else [k / 10 for k in range(26)]
                row |= {"budget_norm": norm, "budget_curve": budget_curve(mine, norm, grid)}
                if all("queries" in r for r in mine):  # records before revision 2 did not count them
                    row["queries_max"] = max(r["queries"] for r in mine)
                if all("start_queries" in r for r in mine):
                    row["start_queries_median"] = statistics.median(r["start_queries"] for r in mine)
                # right and unmoved: no query fooled it, not even a start (it was never attacked)
                row["unattacked"] = sum(r["pred"] == r["label"] and r["linf"] == 0 for r in mine)
                # scored by the oracle's answers (since 2026-12-05) where it was asked the end point
                # (not where it was clipped to eps), else by the evaluation's re-run
                oracle_scored = [r for r in mine if "rescored_pred" in r]
                if oracle_scored:
                    row["oracle_scored"] = len(oracle_scored)
                    row["rescore_disagreements"] = sum(r["rescored_pred"] != r["pred"] for r in oracle_scored)
                # records before revision 3 did not name theirs; a run never mixes them (resume refuses)
                row["revision"] = max(r.get("attack_revision", 2 if "queries" in r else 1) for r in mine)
            rows.append(row)
    return rows


def worst_case_rows(records: list[dict[str, Any]], runs: list[AttackRun]) -> list[dict[str, Any]]:
    """RobustBench's robust accuracy at each L-inf budget: an image is right only if the
    defended victim is right under every attack run at that budget, over the images all of
    them have. A minimum-norm L-inf HopSkipJump run counts at every budget (broken there if
    its perturbation fits it); the L2 minimum-norm attacks (CW, DDN) have no L-inf budget and
    are left out. An attacked input the defense refused (INC past eta, a lone detector's flag)
    is defended, as the adaptive attacks count it. One row per budget and threat model present,
    and one over both."""
    by_run: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        by_run[r["attack"]][r["index"]] = r
    attacked = [run for run in runs if run.name != CLEAN and by_run.get(run.id)]
    open_budget = [run for run in attacked if run.eps is None and run.name == "hopskipjump" and _hsj_linf(run)]

    def broken(run: AttackRun, r: dict[str, Any], eps: float) -> bool:
        return not record_defended(r) and (run.eps is not None or r["linf"] <= eps + 1e-9)

    rows = []
    for eps in sorted({run.eps for run in attacked if run.eps is not None}):
        at_eps = [run for run in attacked if run.eps == eps] + open_budget
        groups = {t: [run for run in at_eps if run.threat == t] for t in (OBLIVIOUS, ADAPTIVE)}
        groups = {t: g for t, g in groups.items() if g}
        if len(groups) == 2:
            groups["all"] = at_eps
        for threat, group in groups.items():
            common = set.intersection(*(set(by_run[run.id]) for run in group))
            if not common:
                continue
            right = sum(not any(broken(run, by_run[run.id][i], eps) for run in group) for i in common)
            low, high = wilson_interval(right, len(common))
            rows.append(
                {
                    "attack": "worst case",
                    "threat_model": threat,
                    "eps": eps,
                    "n": len(common),
                    "runs": [run.id for run in group],
                    "accuracy": right / len(common),
                    "accuracy_ci95_low": low,
                    "accuracy_ci95_high": high,
                }
            )
    return rows


def _hsj_linf(run: AttackRun) -> bool:
    attack = run.build()
    return getattr(attack, "constraint", None) == "linf"


def _rejects(row: dict[str, Any]) -> bool:
    return row.get("accuracy_with_rejection") is not None


def defended(row: dict[str, Any]) -> float:
    """The defended system's accuracy on a row: with rejection where the defense can refuse an
    input (a refused attacked input is defended), else the victim's plain accuracy."""
    return row["accuracy_with_rejection"] if _rejects(row) else row["accuracy"]


def sanity_checks(rows: list[dict[str, Any]], defense: str) -> list[dict[str, str]]:
    """Carlini et al. 2019's checks that an adaptive evaluation is not fooling itself, read off
    the rows (a defense that can refuse is judged with rejection, a refused input defended):
    an unbounded attack reaches ~0%; a larger eps never helps the defense; more
    iterations never help (any-iterate curves fall by construction, so the last-iterate curve
    is what is checked); the attack beats random noise of its budget and try count; on the
    undefended victim BPDA-PGD matches PGD."""
    checks: list[dict[str, str]] = []
    adaptive = [r for r in rows if r.get("threat_model") == ADAPTIVE]

    def label(r: dict[str, Any]) -> str:
        return f"{display_name(r)}@{_eps_label(r['eps'])}" if r["eps"] is not None else display_name(r)

    for r in adaptive:
        if r["eps"] is not None and r["eps"] >= 1 and r["attack"] != "random_noise":
            ok = defended(r) <= 0.02
            checks.append(
                {
                    "check": f"unbounded {label(r)} reaches ~0%",
                    "figures": f"{100 * defended(r):.1f}%" + (" with rejection" if _rejects(r) else ""),
                    "verdict": "pass" if ok else "FAIL: the attack is broken, not the defense robust",
                }
            )
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in adaptive:
        if r["eps"] is not None:
            series[display_name(r)].append(r)
    for name, group in series.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: r["eps"])
        accs = [defended(r) for r in group]
        ok = all(a >= b for a, b in zip(accs, accs[1:], strict=False))
        figures = " > ".join(f"{_eps_label(r['eps'])}: {100 * defended(r):.1f}%" for r in group)
        checks.append(
            {"check": f"{name}: accuracy falls with eps", "figures": figures, "verdict": "pass" if ok else "FAIL"}
        )
    for r in adaptive:
        curve = r.get("iterate_curve")
        if curve and r["attack"] != "random_noise" and len(curve) > 2:
            rises = max(b - a for a, b in zip(curve, curve[1:], strict=False))
            checks.append(
                {
                    "check": f"{label(r)}: more iterations do not help the defense (last-iterate curve)",
                    "figures": f"{100 * curve[0]:.1f}% at iterate 0, {100 * curve[-1]:.1f}% at {len(curve) - 1}, "
                    f"largest rise {100 * rises:.1f} points",
                    "verdict": "pass" if curve[-1] <= curve[0] else "FAIL",
                }
            )
    # like for like: as many noise tries as the attack has iterates (its steps + 1)
    noise = {(r["eps"], len(r.get("iterate_curve") or [])): r for r in adaptive if r["attack"] == "random_noise"}
    for r in adaptive:
        if r["attack"] not in ("bpda_pgd", "eot_pgd") or r["eps"] is None:
            continue
        iterates = len(r.get("iterate_curve") or [])
        n = noise.get((r["eps"], iterates))
        if n is not None:
            checks.append(
                {
                    "check": f"{label(r)} beats random noise ({label(n)}, {iterates} tries)",
                    "figures": f"{100 * defended(r):.1f}% vs noise {100 * defended(n):.1f}%",
                    "verdict": "pass" if defended(r) <= defended(n) else "FAIL",
                }
            )
        elif any(eps == r["eps"] for eps, _ in noise):
            tries = sorted(t for eps, t in noise if eps == r["eps"])
            checks.append(
                {
                    "check": f"{label(r)} beats random noise",
                    "figures": f"noise ran {', '.join(map(str, tries))} tries, the attack {iterates} iterates",
                    "verdict": f"not checked: run random_noise(tries={iterates})",
                }
            )
    if defense == "none":  # like for like: a PGD row with as many steps as the BPDA row
        for r in adaptive:
            curve = r.get("iterate_curve")
            if r["attack"] != "bpda_pgd" or not curve:
                continue
            steps = f"steps={len(curve) - 1}"
            for p in rows:
                if p["attack"] == "pgd" and p["eps"] == r["eps"] and steps in (p.get("variant") or "").split(","):
                    gap = abs(r["last_iterate_accuracy"] - p["accuracy"])
                    checks.append(
                        {
                            "check": f"{label(r)} on the undefended victim matches {label(p)}",
                            "figures": f"last iterate {100 * r['last_iterate_accuracy']:.1f}%, any iterate "
                            f"{100 * r['accuracy']:.1f}%, PGD {100 * p['accuracy']:.1f}%",
                            "verdict": "pass" if gap <= 0.02 else "FAIL",
                        }
                    )
    return checks


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


def _figure_table(
    rows: list[dict[str, Any]], present: str, header: list[str], cells: Callable[[dict[str, Any]], list[str]]
) -> str:
    """One line per row that has figure ``present``: attack, eps, n, then ``cells(row)``."""
    lines = [f"| attack | eps (/255) | n | {' | '.join(header)} |", "|" + " --- |" * (3 + len(header))]
    for r in rows:
        if r.get(present) is not None:
            lines.append(f"| {display_name(r)} | {_eps_label(r['eps']) or '-'} | {r['n']} | {' | '.join(cells(r))} |")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def rejection_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy of C(G(z*)), the share rejected, and the accuracy when a rejected attacked
    input counts as defended and a rejected clean one as wrong."""
    return _figure_table(
        rows,
        "rejected_share",
        ["accuracy", "rejected", "accuracy with rejection"],
        lambda r: [_pct(r["accuracy"]), _pct(r["rejected_share"]), _pct(r["accuracy_with_rejection"])],
    )


def termination_table(rows: list[dict[str, Any]]) -> str:
    """Deep Protection with the true labels: top-1 / top-5 and the split of wrong answers into
    overfit (right at some checked iterate, wrong at the end) and underfit (never right)."""
    return _figure_table(
        rows,
        "overfit_share",
        ["top-1", "top-5", "overfit", "underfit", "median iterations"],
        lambda r: [
            *(_pct(r[k]) for k in ("accuracy", "top5", "overfit_share", "underfit_share")),
            f"{r['median_iterations']:.0f}",
        ],
    )


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
    head = (
        "| attack | threat model | gradient | eps (/255) | n | accuracy | 95% CI | top-5 | SSIM | mean L2 | mean Linf "
        "| attack success | s/image | images/s |"
    )
    lines = [head, "|" + " --- |" * 14]
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        threat = "-" if r["attack"] == CLEAN else r.get("threat_model", OBLIVIOUS)
        lines.append(
            f"| {display_name(r)} | {threat} | {r.get('gradient') or '-'} | {_eps_label(r['eps']) or '-'} | {r['n']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r.get('accuracy_ci95_low', 0):.1f}-{100 * r.get('accuracy_ci95_high', 1):.1f}% | "
            f"{100 * r['top5']:.1f}% | {r['ssim']:.3f} | {r['mean_l2']:.3f} | {r['mean_linf'] * 255:.2f}/255 | "
            f"{100 * r['attack_success']:.1f}% | {r['seconds'] / r['n']:.4f} | {ips} |"
        )
    return "\n".join(lines) + "\n"


THREAT_TITLES = {
    OBLIVIOUS: "oblivious attacks (crafted on the bare victim; the defense unknown to the attacker)",
    ADAPTIVE: "adaptive attacks (crafted through the defense: victim(defense(x)))",
}


def write_results(
    out: Path,
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    detection: list[dict[str, Any]] | None = None,
    worst_case: list[dict[str, Any]] | None = None,
) -> None:
    checks = sanity_checks(rows, header["defense"])
    extra = {"detection": detection} if detection else {}
    extra |= {"worst_case": worst_case} if worst_case else {}
    extra |= {"sanity_checks": checks} if checks else {}
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
    ]
    clean = [r for r in rows if r["attack"] == CLEAN]
    for threat in (OBLIVIOUS, ADAPTIVE):
        group = [r for r in rows if r.get("threat_model", OBLIVIOUS) == threat and r["attack"] != CLEAN]
        if not group:
            continue
        group = clean + group
        md += [
            f"## Accuracy (%), {THREAT_TITLES[threat]}, shaped like paper 002 Table 1\n",
            paper_table(group, "accuracy", defense, percent=True),
            f"## SSIM(defended, clean), {threat} attacks, shaped like paper 002 Table 2\n",
            paper_table(group, "ssim", defense, percent=False),
        ]
    md += ["## All figures\n", detail_table(rows)]
    if worst_case:
        md += ["## Robust accuracy: the worst case over the attacks run, per image (RobustBench)\n"]
        md.append(worst_case_table(worst_case))
    curves = [r for r in rows if r.get("any_iterate_curve")]
    if curves:
        md += [
            "## Accuracy after every iteration (paper 002 Fig. 4): any iterate / the iterate itself\n",
            "An image is broken as soon as any iterate fools the defended victim (the attack keeps it); the second "
            "figure is the accuracy on iterate k alone.\n",
            iteration_table(curves),
        ]
    budgets = [r for r in rows if r.get("budget_curve")]
    if budgets:
        md += ["## Accuracy against the perturbation budget (paper 002 Fig. 5)\n", budget_table(budgets)]
    if checks:
        md += ["## Sanity checks (Carlini et al. 2019)\n", sanity_table(checks)]
    if any(r.get("rejected_share") is not None for r in rows):
        md += ["## Rejection (INC, paper 004 Sec. 2.1: ||G(z*) - x||_2 >= eta)\n", rejection_table(rows)]
    if any(r.get("overfit_share") is not None for r in rows):
        md += ["## Errors: overfit / underfit (paper 001 Sec. 4.2, Fig. 5)\n", termination_table(rows)]
    if detection:
        md += ["## Detection (balanced: each clean image and its attacked version), as paper 003 Table 4\n"]
        md.append(detection_table(detection))
    atomic_write_text(out / "results.md", "\n".join(md))


def worst_case_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| eps (/255) | threat model | n | robust accuracy | 95% CI | attacks |", "|" + " --- |" * 6]
    for r in rows:
        lines.append(
            f"| {_eps_label(r['eps'])} | {r['threat_model']} | {r['n']} | {100 * r['accuracy']:.1f}% | {100 * r['accuracy_ci95_low']:.1f}-"
            f"{100 * r['accuracy_ci95_high']:.1f}% | {', '.join(r['runs'])} |"
        )
    return "\n".join(lines) + "\n"


def iteration_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["any_iterate_curve"]) for r in rows)
    lines = ["| attack | eps (/255) | gradient | n | " + " | ".join(str(k) for k in range(width)) + " |"]
    lines.append("|" + " --- |" * (4 + width))
    for r in rows:
        cells = [
            f"{100 * a:.0f}/{100 * b:.0f}" for a, b in zip(r["any_iterate_curve"], r["iterate_curve"], strict=True)
        ]
        cells += [""] * (width - len(cells))
        lines.append(
            f"| {display_name(r)} | {_eps_label(r['eps'])} | {r.get('gradient') or '-'} | {r['n']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def budget_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        unit = "/255" if r["budget_norm"] == "linf" else ""
        shown = [p for k, p in enumerate(r["budget_curve"]) if k % 2 == 0 or k == 8]
        head = " | ".join(f"{p[0] * 255:.0f}{unit}" if unit else f"{p[0]:.1f}" for p in shown)
        lines += [
            f"{display_name(r)} ({r['threat_model']}, {r['budget_norm']}, n = {r['n']}"
            + (f", at most {r['queries_max']} queries per image" if r.get("queries_max") is not None else "")
            + (f", median {r['start_queries_median']:g} of them finding a start" if "start_queries_median" in r else "")
            + (f"; {r['unattacked']} image(s) found no start and were never attacked" if r.get("unattacked") else "")
            + (
                "; scored by the oracle's answers"
                + (f" on {r['oracle_scored']} (the rest by a re-run)" if r["oracle_scored"] < r["n"] else "")
                + f", which a re-run of the defense contradicts on {r['rescore_disagreements']} image(s)"
                if "rescore_disagreements" in r
                else ""
            )
            + "):\n",
            f"| budget | {head} |",
            "|" + " --- |" * (1 + len(shown)),
            "| accuracy | " + " | ".join(f"{100 * p[1]:.1f}%" for p in shown) + " |\n",
        ]
    return "\n".join(lines) + "\n"


def sanity_table(checks: list[dict[str, str]]) -> str:
    lines = ["| check | figures | verdict |", "| --- | --- | --- |"]
    lines += [f"| {c['check']} | {c['figures']} | {c['verdict']} |" for c in checks]
    return "\n".join(lines) + "\n"


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
        ax.set_title(f"L-inf {_eps_label(eps)}/255")
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


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'attack':<24}{'threat':>10}{'eps/255':>8}{'n':>6}{'acc':>8}{'top5':>8}{'SSIM':>7}{'L2':>7}{'s/img':>9}"]
    for r in rows:
        lines.append(
            f"{display_name(r):<24}{r.get('threat_model', OBLIVIOUS):>10}{_eps_label(r['eps']) or '-':>8}{r['n']:>6}{100 * r['accuracy']:>7.1f}%"
            f"{100 * r['top5']:>7.1f}%{r['ssim']:>7.3f}{r['mean_l2']:>7.3f}{r['seconds'] / r['n']:>9.4f}"
            + (f"  rejected {100 * r['rejected_share']:.1f}%" if r.get("rejected_share") is not None else "")
        )
    return "\n".join(lines)
