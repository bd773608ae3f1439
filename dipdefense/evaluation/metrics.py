"""Per-image measurements and their aggregation (torchmetrics)."""

import math
from typing import Any

import torch
from torchmetrics.functional import accuracy


def perturbation_norms(adversarial: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    delta = (adversarial.float() - clean.float()).flatten(1)
    return delta.norm(dim=1), delta.abs().amax(dim=1)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96): how far an
    accuracy measured on n sampled images may be from the accuracy on the whole set."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(records: list[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """One results row from the records of one attack run."""
    preds = torch.tensor([r["pred"] for r in records])
    labels = torch.tensor([r["label"] for r in records])
    seconds = sum(r["seconds"] for r in records)
    low, high = wilson_interval(int((preds == labels).sum()), len(records))
    return {
        "n": len(records),
        "accuracy": float(accuracy(preds, labels, task="multiclass", num_classes=num_classes, average="micro")),
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "top5": sum(bool(r["top5"]) for r in records) / len(records),
        "ssim": sum(r["ssim"] for r in records) / len(records),
        "mean_l2": sum(r["l2"] for r in records) / len(records),
        "mean_linf": sum(r["linf"] for r in records) / len(records),
        "attack_success": sum(r["adv_pred"] != r["label"] for r in records if r["clean_pred"] == r["label"])
        / max(1, sum(r["clean_pred"] == r["label"] for r in records)),
        "seconds": seconds,
        "images_per_s": len(records) / seconds if seconds > 0 else None,
        # Detectors and detector-gated defenses: the share flagged (= purifier runs paid for).
        "flagged_share": sum(bool(r["flagged"]) for r in records) / len(records)
        if all("flagged" in r for r in records)
        else None,
        **rejection_figures(records),
        **iterate_figures(records),
        **termination_figures(records),
    }


def termination_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Deep Protection (paper 001 Sec. 4.1-4.2, Fig. 2 and 5) with the true labels (oracle mode, or
    static mode with error_split): the shares of all images whose wrong answer overfit (the
    true label was top-1 at some checked iterate) or underfit (never), and the median
    iteration the fit stopped at. None for other defenses."""
    if not records or not all("error_type" in r for r in records):
        return {"overfit_share": None, "underfit_share": None, "median_iterations": None}
    kinds = [r["error_type"] for r in records]
    iterations = torch.tensor([float(r["iterations"]) for r in records])
    return {
        "overfit_share": kinds.count("overfit") / len(kinds),
        "underfit_share": kinds.count("underfit") / len(kinds),
        "median_iterations": float(iterations.median()),
    }


def iterate_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Attacks that judge every iterate (bpda_pgd, eot_pgd, random_noise): after iterate k, the
    share of images no iterate up to k has broken (``any_iterate_curve``: the attack keeps the
    first that fools) and the share right at iterate k itself (``iterate_curve``; its last
    value is ``last_iterate_accuracy``). None for other attacks. With resubmission (records
    carry ``resubmit``, one verdict per copy): ``accuracy_before_resubmission`` (the attack's own
    any-iterate figure; the row's accuracy is after it) and ``resubmit_copies``."""
    if not records or not all(r.get("history") for r in records):
        return {"any_iterate_curve": None, "iterate_curve": None, "last_iterate_accuracy": None}
    right = torch.tensor([[c == "1" for c in r["history"]] for r in records])
    any_curve = right.cummin(dim=1).values.float().mean(0)
    curve = right.float().mean(0)
    figures = {
        "any_iterate_curve": any_curve.tolist(),
        "iterate_curve": curve.tolist(),
        "last_iterate_accuracy": float(curve[-1]),
    }
    if all(r.get("resubmit") for r in records):
        figures["accuracy_before_resubmission"] = float(any_curve[-1])
        figures["resubmit_copies"] = len(records[0]["resubmit"])
    return figures


def budget_curve(records: list[dict[str, Any]], norm: str, budgets: list[float]) -> list[tuple[float, float]]:
    """Accuracy against a perturbation budget for a minimum-norm attack (paper 002 Fig. 5): an
    image is broken at budget b if the defended victim got its attacked version wrong and the
    perturbation's ``norm`` ("linf" or "l2") is at most b."""
    points = []
    for b in budgets:
        broken = sum(r["pred"] != r["label"] and r[norm] <= b + 1e-9 for r in records)
        points.append((b, 1 - broken / len(records)))
    return points


def rejection_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Defenses that may reject an input (INC, paper 004 Sec. 2.1; a lone detector refuses what it
    flags): the rejected share, and the
    accuracy of the system that answers "reject": a rejected attacked input counts as
    defended, a rejected clean one as wrong. None for defenses that never reject."""
    if not records or not all("rejected" in r for r in records):
        return {"rejected_share": None, "accuracy_with_rejection": None}
    rejected = [bool(r["rejected"]) for r in records]
    attacked = records[0].get("attack_name") != "clean"
    correct = [
        (r["pred"] == r["label"] and not rej) or (attacked and rej) for r, rej in zip(records, rejected, strict=True)
    ]
    return {"rejected_share": sum(rejected) / len(records), "accuracy_with_rejection": sum(correct) / len(records)}
