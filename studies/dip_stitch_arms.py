"""Issue 12, hypotheses 1-5: does fitting the DIP the way the official deep-image-prior code
does (input jitter, an output EMA, input noise scale 1/10, PyTorch's default init, zero padding), counting
t0 in sampled images, the paper's 10-step PGD, or another victim (same clean fits, PGD crafted
on that victim) move dip_stitch's decision traces toward what paper 002's figures imply?

Each arm is one run of ``studies/dip_stitch_sensitivity.py`` on the same 64 training-split
images (never the test images), with one engine option or the attack changed, and the rule
at the paper's settings plus t0 = 100 and t0 = 250 iterations (t0 = 50 *sampled images* at
one image every 5 iterations). Arms already run are read back, so the script resumes; each
costs about 10 min on 2 CPU cores (two sets of 64 fits, every iterate kept on disk).

    python studies/dip_stitch_arms.py                  # every arm not yet run, then the report
    python studies/dip_stitch_arms.py --only jitter,ema
    python studies/dip_stitch_arms.py --report-only

Writes ``studies/dip_stitch_arms/<arm>.{json,md,png}`` and the comparison,
``studies/dip_stitch_arms/README.md`` and ``arms.png``.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.common.atomic_files import atomic_write, atomic_write_text  # noqa: E402

OUT = REPO / "studies" / "dip_stitch_arms"


class Arm(NamedTuple):
    name: str
    engine: dict[str, Any]  # DIPSettings fields changed from paper 002's
    pgd_steps: int
    what: str  # what it tests, for the report
    victim: str = "victim_cifar_resnet20.ckpt"  # under checkpoints/


ARMS: list[Arm] = [
    Arm("paper", {}, 50, "paper 002's fit (Algorithm 1), PGD-50"),
    Arm(
        "jitter",
        {"input_jitter": 1 / 30},
        50,
        "z + N(0, 1/30) afresh at every iteration (official code's reg_noise_std)",
    ),
    Arm("ema", {"output_ema": 0.99}, 50, "rule reads the EMA of the iterates, w = 0.99 (official code's exp_weight)"),
    Arm("pgd10", {}, 10, "paper fit; the attack is torchattacks' default PGD-10"),
    Arm("noise_scale", {"noise_scale": 0.1}, 50, "z ~ U(0, 1/10) (official code's input scale)"),
    Arm("jitter_ema", {"input_jitter": 1 / 30, "output_ema": 0.99}, 50, "both, as the official denoising notebook"),
    # Hypothesis 5: DIPDefend's code (and the official DIP code) where ours differs from it.
    Arm("init_default", {"init": "default"}, 50, "PyTorch's default init instead of xavier"),
    Arm("pad_zero", {"network": {"pad": "zero"}}, 50, "zero padding instead of reflection"),
    Arm(
        "pad_zero_noise",
        {"network": {"pad": "zero"}, "noise_scale": 0.1},
        50,
        "zero padding and z ~ U(0, 1/10): the two changes that helped clean images",
    ),
    # Hypothesis 1: the same clean traces (the fit does not depend on the victim) read by
    # another victim, and PGD-50 crafted on that victim.
    Arm(
        "victim_nols",
        {},
        50,
        "paper fit; victim: ResNet-20 trained without label smoothing (configs/victim_cifar_nols.yaml)",
        "victim_cifar_resnet20_nols.ckpt",
    ),
    Arm(
        "victim_resnet56",
        {},
        50,
        "paper fit; victim: ResNet-56, the same recipe at depth 56 (configs/victim_cifar_resnet56.yaml)",
        "victim_cifar_resnet56.ckpt",
    ),
]
# The rule at the paper's t0 = 50 iterations, and t0 counted in sampled images (50 x 5 = 250).
RULE_SETTINGS = [{}, {"t0": 100}, {"t0": 250}]
# What paper 002's 85.6% clean / 83.1% PGD-8 imply for the traces (issue 12).
TARGETS = {"clean_with_crossing": 0.15, "pgd_with_crossing": 0.90, "pgd_accuracy_with_crossing": 0.85}
STABILITY_ITERATIONS = ("50", "100", "200")


def run_arm(arm: Arm, num_images: int, iterations: int, out: Path) -> None:
    victim = REPO / "checkpoints" / arm.victim
    if not victim.is_file():
        raise SystemExit(f"arm {arm.name}: its victim {victim} does not exist (train it first: {arm.what})")
    cmd = [sys.executable, str(REPO / "studies" / "dip_stitch_sensitivity.py"), "--num-images", str(num_images)]
    cmd += ["--iterations", str(iterations), "--victim", str(victim)]
    cmd += ["--settings", json.dumps(RULE_SETTINGS), "--engine", json.dumps(arm.engine)]
    cmd += ["--pgd-steps", str(arm.pgd_steps), "--out", str(out / arm.name)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def rule_at(result: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """An arm's figures for one rule setting (``{}``: the paper's; ``{"t0": 100}``...)."""
    return next(r for r in result["sweep"] if r["change"] == change)


def row_for(name: str, result: dict[str, Any], change: dict[str, Any]) -> str:
    rule = rule_at(result, change)
    c, p = rule["clean"], rule["pgd"]
    return (
        f"| {name} | {c['accuracy']:.1%} / {p['accuracy']:.1%} | {c['ssim']:.3f} / {p['ssim']:.3f} | "
        f"{pct(c['with_crossing'])} | {pct(c['accuracy_with_crossing'])} / {pct(c['accuracy_fallback'])} | "
        f"{pct(p['with_crossing'])} | {pct(p['accuracy_with_crossing'])} / {pct(p['accuracy_fallback'])} |"
    )


def report(results: dict[str, dict[str, Any]]) -> str:
    first = next(iter(results.values()))
    lines = [
        "# dip_stitch: fitting options, t0, the attack and the victim (issue 12, hypotheses 1-5)",
        "",
        f"{first['num_images']} images from the victim's held-out part of the CIFAR-10 *training* split (the "
        f"same images in every arm), clean and PGD eps = 8/255; victim {first['victim']} unless the arm names "
        "another (PGD is then crafted on that victim); paper 002's CIFAR DIP, "
        f"T = {first['iterations']}, rule at tau 0.7, K 15, beta 0.5, one image every 5 iterations. "
        "Command: `python studies/dip_stitch_arms.py`; each arm's own report is `<arm>.md` here. Minutes are "
        "the arm's last run (a rerun from cached traces only replays them).",
        "",
        "Targets that paper 002's 85.6% clean / 83.1% PGD-8 imply: clean images with a crossing after t0 "
        "<= 15%, PGD images with one >= 90%, PGD accuracy given a crossing >= 85%.",
        "",
        "| arm | what changes | undefended victim, clean / PGD | minutes |",
        "| --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        what = next(a.what for a in ARMS if a.name == name)
        u = result["undefended"]
        lines.append(f"| {name} | {what} | {u['clean']:.1%} / {u['pgd']:.1%} | {result['minutes']:.0f} |")
    header = (
        "| arm | accuracy clean / PGD | SSIM clean / PGD | clean with crossing | clean acc with / without "
        "| PGD with crossing | PGD acc with / without |"
    )
    for change, title in (
        ({}, "t0 = 50 iterations (the paper's reading)"),
        ({"t0": 100}, "t0 = 100 iterations"),
        ({"t0": 250}, "t0 = 250 iterations (50 sampled images)"),
    ):
        lines += ["", f"## Rule at {title}", "", header, "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [row_for(name, result, change) for name, result in results.items()]
    lines += ["", "![trace statistics against the targets, t0 = 50 and 100](targets.png)"]
    lines += paired(results)
    lines += [
        "",
        "## Traces (no rule)",
        "",
        "Label changes per image, the median iteration of the last change, and the victim's accuracy on the "
        "iterates x(50) / x(100) / x(200) (the stability figure of hypothesis 1).",
        "",
        "| arm | label changes clean / PGD | last change (median) clean / PGD "
        "| victim acc on x(50) / x(100) / x(200), clean | same, PGD |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        s = result["trace_stats"]
        on = {k: " / ".join(pct(s[k]["accuracy_by_iteration"].get(t)) for t in STABILITY_ITERATIONS) for k in s}
        lines.append(
            f"| {name} | {s['clean']['mean_label_changes']:.1f} / {s['pgd']['mean_label_changes']:.1f} | "
            f"{s['clean']['median_last_change_iteration']:.0f} / {s['pgd']['median_last_change_iteration']:.0f} | "
            f"{on['clean']} | {on['pgd']} |"
        )
    lines += ["", "![victim accuracy on x(t) per arm](arms.png)", ""]
    return "\n".join(lines)


def paired(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each arm against the paper arm image by image (same images, same PGD images where the
    victim is the same): images it gets right that the paper arm gets wrong (+) and the reverse
    (-). Sign-test p-value (two-sided) on the images that differ: whether a gain is chance."""
    if "paper" not in results:
        return []
    lines = [
        "",
        "## Against the paper arm, image by image",
        "",
        "Images an arm gets right and the paper arm wrong (+), and the reverse (-); p: two-sided sign test "
        "on the images that differ. Only arms run since per-image outcomes were recorded.",
        "",
        "| arm | t0 | clean + / - (p) | PGD + / - (p) |",
        "| --- | --- | --- | --- |",
    ]
    for change, t0 in (({}, 50), ({"t0": 100}, 100)):
        base = rule_at(results["paper"], change)
        for name, result in results.items():
            rule = rule_at(result, change)
            if name == "paper" or "correct" not in rule["clean"] or "correct" not in base["clean"]:
                continue
            cells = []
            for kind in ("clean", "pgd"):
                if kind == "pgd" and result["victim"] != results["paper"]["victim"]:
                    cells.append("- (another victim's PGD)")
                    continue
                gained, lost = gains_losses(rule[kind]["correct"], base[kind]["correct"])
                cells.append(f"+{gained} / -{lost} ({sign_test(gained, lost):.2g})")
            lines.append(f"| {name} | {t0} | {cells[0]} | {cells[1]} |")
    return lines


def gains_losses(ours: str, theirs: str) -> tuple[int, int]:
    """Images right in ``ours`` and wrong in ``theirs``, and the reverse, from per-image "1"/"0" strings."""
    pairs = list(zip(ours, theirs, strict=True))
    return pairs.count(("1", "0")), pairs.count(("0", "1"))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` under p = 1/2 (scipy, which
    scikit-image brings)."""
    from scipy.stats import binomtest

    return binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, kind in zip(axes, ("clean", "pgd"), strict=True):
        for name, result in results.items():
            by_t = result["trace_stats"][kind]["accuracy_by_iteration"]
            ax.plot([int(t) for t in by_t], list(by_t.values()), label=name, linewidth=1)
        ax.axvline(50, color="grey", linestyle=":")
        ax.axvline(250, color="grey", linestyle="--")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("iteration t (dotted: t0 = 50, dashed: 250)")
        ax.set_title(f"victim accuracy on x(t), {kind} inputs", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_targets(results: dict[str, dict[str, Any]], path: Path) -> None:
    """The three trace statistics the paper's figures need, per arm, at t0 = 50 and 100, beside
    their targets (the dashed lines): where each arm stands against what is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("clean", "with_crossing", "clean images with a crossing after t0", TARGETS["clean_with_crossing"]),
        ("pgd", "with_crossing", "PGD images with a crossing after t0", TARGETS["pgd_with_crossing"]),
        ("pgd", "accuracy_with_crossing", "PGD accuracy given a crossing", TARGETS["pgd_accuracy_with_crossing"]),
    )
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(names) + 1.4), sharey=True)
    for ax, (kind, key, title, target) in zip(axes, panels, strict=True):
        for offset, (change, label) in zip((-0.18, 0.18), (({}, "t0 = 50"), ({"t0": 100}, "t0 = 100")), strict=True):
            values = [rule_at(results[n], change)[kind][key] or 0.0 for n in names]
            ax.barh([i + offset for i in range(len(names))], values, height=0.34, label=label)
        ax.axvline(target, color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"{title}\n(target {'<=' if kind == 'clean' else '>='} {target:.0%})", fontsize=9)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma list of arms; accepted: {', '.join(a.name for a in ARMS)}")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--out", type=Path, default=OUT, help="folder of the arms' reports and the comparison")
    p.add_argument("--report-only", action="store_true", help="only redraw the comparison from the arms run")
    p.add_argument(
        "--rerun",
        action="store_true",
        help="rerun the --only arms even where their report exists (cached traces are replayed, not refitted)",
    )
    args = p.parse_args()
    names = [a.name for a in ARMS]
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(names))
    if unknown:
        p.error(f"--only: unknown arm(s) {unknown}; accepted: {', '.join(names)}")
    if args.rerun and not only:
        p.error("--rerun needs --only (which arms to rerun)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for arm in ARMS:
            if (only and arm.name not in only) or ((out / f"{arm.name}.json").exists() and not args.rerun):
                continue
            run_arm(arm, args.num_images, args.iterations, out)
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").exists()}
    if not results:
        raise SystemExit(f"no arm has run yet; {out} holds no <arm>.json")
    plot(results, out / "arms.png")
    plot_targets(results, out / "targets.png")
    atomic_write_text(out / "README.md", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
