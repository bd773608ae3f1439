"""Rows as markdown: results.md's tables (paper 002's Table 1 / 2 shapes, every figure, the worst
case, the curves, sanity, rejection, termination, detection) and the summary printed at the end.
"""

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from dipdefense.evaluation.attack_specs import ADAPTIVE, CLEAN, OBLIVIOUS
from dipdefense.evaluation.rows import display_name, eps_label

THREAT_TITLES = {
    OBLIVIOUS: "oblivious attacks (crafted on the bare victim; the defense unknown to the attacker)",
    ADAPTIVE: "adaptive attacks (crafted through the defense: victim(defense(x)))",
}


def results_markdown(
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    detection: list[dict[str, Any]] | None,
    worst_case: list[dict[str, Any]] | None,
    checks: list[dict[str, str]],
) -> str:
    """results.md: paper 002's Table 1 / 2 shapes per threat model, every figure, the worst case,
    the curves, the sanity checks, rejection, termination and detection, as they apply."""
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
    if header.get("survivors_of"):
        md += [
            "## The cascade: this run and the run whose survivors it attacked\n",
            cascade_line(header["survivors_of"]),
        ]
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
    return "\n".join(md)


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'attack':<24}{'threat':>10}{'eps/255':>8}{'n':>6}{'acc':>8}{'top5':>8}{'SSIM':>7}{'L2':>7}{'s/img':>9}"]
    for r in rows:
        lines.append(
            f"{display_name(r):<24}{r.get('threat_model', OBLIVIOUS):>10}{eps_label(r['eps']) or '-':>8}{r['n']:>6}{100 * r['accuracy']:>7.1f}%"
            f"{100 * r['top5']:>7.1f}%{r['ssim']:>7.3f}{r['mean_l2']:>7.3f}{r['seconds'] / r['n']:>9.4f}"
            + (f"  rejected {100 * r['rejected_share']:.1f}%" if r.get("rejected_share") is not None else "")
        )
    return "\n".join(lines)


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
        budgets = "/".join(eps_label(r["eps"]) for r in group if r["eps"] is not None)
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
            f"| {display_name(r)} | {threat} | {r.get('gradient') or '-'} | {eps_label(r['eps']) or '-'} | {r['n']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r.get('accuracy_ci95_low', 0):.1f}-{100 * r.get('accuracy_ci95_high', 1):.1f}% | "
            f"{100 * r['top5']:.1f}% | {r['ssim']:.3f} | {r['mean_l2']:.3f} | {r['mean_linf'] * 255:.2f}/255 | "
            f"{100 * r['attack_success']:.1f}% | {r['seconds'] / r['n']:.4f} | {ips} |"
        )
    return "\n".join(lines) + "\n"


def cascade_line(c: dict[str, Any]) -> str:
    """One sentence: the worst case over an earlier run and the run on its survivors."""
    bound = "at most " if c.get("upper_bound") else ""
    return (
        f"This run attacked the {c['survivors']} of {c['parent_images']} images that `{c['run']}` left right under "
        f"every attack ({c['attacked']} finished); {c['right']} stay right. Worst case over both runs, per image, on "
        f"those {c['parent_images']} images: {bound}{100 * c['worst_case_accuracy']:.1f}%.\n"
    )


def worst_case_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| eps (/255) | threat model | n | robust accuracy | 95% CI | attacks |", "|" + " --- |" * 6]
    for r in rows:
        lines.append(
            f"| {eps_label(r['eps'])} | {r['threat_model']} | {r['n']} | {100 * r['accuracy']:.1f}% | {100 * r['accuracy_ci95_low']:.1f}-"
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
            f"| {display_name(r)} | {eps_label(r['eps'])} | {r.get('gradient') or '-'} | {r['n']} | "
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


def detection_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| attack | eps (/255) | pairs | detection accuracy | ROC-AUC | TPR | FPR |", "|" + " --- |" * 7]
    for r in rows:
        lines.append(
            f"| {display_name(r)} | {eps_label(r['eps']) or '-'} | {r['n_pairs']} | {100 * r['detection_accuracy']:.1f}% | "
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
            lines.append(f"| {display_name(r)} | {eps_label(r['eps']) or '-'} | {r['n']} | {' | '.join(cells(r))} |")
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
