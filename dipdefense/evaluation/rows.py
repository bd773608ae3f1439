"""The per-image records of a run turned into its rows: one per attack run (accuracy with its
95% interval, SSIM, norms, curves), the per-image worst case over the attacks, detection rows
and the sanity checks of Carlini et al. 2019. Pure: records in, dictionaries out.
"""

import statistics
from collections import defaultdict
from typing import Any

import torch

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
        return f"{display_name(r)}@{eps_label(r['eps'])}" if r["eps"] is not None else display_name(r)

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
        figures = " > ".join(f"{eps_label(r['eps'])}: {100 * defended(r):.1f}%" for r in group)
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


def display_name(row: dict[str, Any]) -> str:
    """``pgd``, or ``pgd(steps=50)`` for a run with parameters written in the attack list."""
    return f"{row['attack']}({row['variant']})" if row.get("variant") else row["attack"]


def eps_label(eps: float | None) -> str:
    return "" if eps is None else f"{eps * 255:.4g}"
