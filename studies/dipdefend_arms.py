"""Issue 12, hypothesis 5 for DIPDefend: does fitting it the way its authors' code does (zero
padding, PyTorch's default init instead of xavier) change what it gets right?

The same 64 training-split images as ``studies/dip_stitch_arms.py`` (the victim's held-out
validation part, seed 1; never the test images), clean and PGD-50 eps 8/255 crafted on the bare
shipped victim (oblivious), purified by ``dipdefend`` with one arm's settings changed. DIPDefend
selects by its PSNR curve (``dipdefense/dip/dipdefend.py``), not by the victim's labels, so there are no
crossings to count: each arm reports accuracy, SSIM to the clean image, the iterate the rule picked,
and image by image against the paper arm (sign test). Arms already run are read back, so the
script resumes; each costs about 6 min on 2 CPU cores (128 fits of T = 4000, 32 at a time).

    python studies/dipdefend_arms.py                  # every arm not yet run, then the report
    python studies/dipdefend_arms.py --only pad_zero
    python studies/dipdefend_arms.py --report-only

Writes ``studies/dipdefend_arms/<arm>.json`` and ``studies/dipdefend_arms/README.md``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.attacks import build_attack  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.ssim import per_image_ssim  # noqa: E402
from dipdefense.defenses import build_defense  # noqa: E402
from dipdefense.nets import load_classifier  # noqa: E402
from studies.dip_stitch_arms import gains_losses, sign_test  # noqa: E402
from studies.dip_stitch_sensitivity import pick_images  # noqa: E402

OUT = REPO / "studies" / "dipdefend_arms"
VICTIM = REPO / "checkpoints" / "victim_cifar_resnet20.ckpt"
NUM_IMAGES, SEED, PGD_STEPS = 64, 1, 50  # dip_stitch_arms' images and attack


class Arm(NamedTuple):
    name: str
    params: dict[str, Any]  # dipdefend arguments changed from ours
    what: str


ARMS = [
    Arm("paper", {}, "ours: reflection padding, xavier init (dipdefend's defaults)"),
    Arm("pad_zero", {"pad": "zero"}, "zero padding, as DIPDefend's code pads"),
    Arm("init_default", {"init": "default"}, "PyTorch's default init, as DIPDefend's code initialises"),
    Arm("code", {"pad": "zero", "init": "default"}, "both: DIPDefend's code where ours differs"),
]


def attacked_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.Module]:
    """(clean, PGD, labels, train indices, victim), in dip_stitch_sensitivity's order of calls on
    the global RNG, so the PGD images are the ones its arms saw on this machine."""
    torch.manual_seed(SEED)
    classifier = load_classifier(str(VICTIM))
    clean, labels, indices = pick_images(NUM_IMAGES, SEED)
    adversarial = build_attack("pgd", eps=8 / 255, steps=PGD_STEPS)(classifier, clean, labels)
    return clean, adversarial, labels, indices, classifier


def run_arm(arm: Arm, data: tuple) -> dict[str, Any]:
    clean, adversarial, labels, indices, classifier = data
    defense = build_defense("dipdefend", **arm.params)
    started = time.time()
    result: dict[str, Any] = {"arm": arm.name, "params": defense.params(), "what": arm.what}
    for kind, x in (("clean", clean), ("pgd", adversarial)):
        purified = defense.purify_detailed(x, classifier, indices)
        with torch.no_grad():
            correct = classifier(purified.images).argmax(1) == labels
        picked = [d["iterations"] for d in purified.details]
        result[kind] = {
            "accuracy": correct.float().mean().item(),
            "ssim": per_image_ssim(purified.images, clean).mean().item(),
            "correct": "".join("1" if c else "0" for c in correct.tolist()),
            "picked_iteration_median": statistics.median(picked),
            "picked_iteration_quartiles": statistics.quantiles(picked, n=4),
        }
        print(json.dumps({"arm": arm.name, kind: round(result[kind]["accuracy"], 3)}), flush=True)
    result["minutes"] = (time.time() - started) / 60
    result["command"] = "python studies/dipdefend_arms.py --only " + arm.name
    return result


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# DIPDefend fitted as its authors' code fits it (issue 12, hypothesis 5)",
        "",
        f"{NUM_IMAGES} images from the victim's held-out part of the CIFAR-10 training split (seed {SEED}, the "
        f"images of `studies/dip_stitch_arms.py`), clean and PGD-{PGD_STEPS} eps 8/255 crafted on the bare shipped "
        "ResNet-20 (oblivious). dipdefend at T = 4000, its PSNR-curve rule; one setting changed per arm. "
        "Command: `python studies/dipdefend_arms.py` (2-core CPU).",
        "",
        "| arm | what | clean | PGD-8 | SSIM clean / PGD | iterate picked, median (quartiles) clean; PGD "
        "| clean vs paper arm (+/-, p) | PGD vs paper arm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = results.get("paper")
    for arm in ARMS:
        r = results.get(arm.name)
        if r is None:
            lines.append(f"| {arm.name} | {arm.what} | not run | | | | | |")
            continue
        paired = []
        for kind in ("clean", "pgd"):
            if base is None or arm.name == "paper":
                paired.append("-")
                continue
            gains, losses = gains_losses(r[kind]["correct"], base[kind]["correct"])
            paired.append(f"+{gains} / -{losses} (p = {sign_test(gains, losses):.2f})")

        def picked(k: str, r: dict = r) -> str:
            q = r[k]["picked_iteration_quartiles"]
            return f"{r[k]['picked_iteration_median']:.0f} ({q[0]:.0f}-{q[2]:.0f})"

        lines.append(
            f"| {arm.name} | {arm.what} | {r['clean']['accuracy']:.1%} | {r['pgd']['accuracy']:.1%} | "
            f"{r['clean']['ssim']:.3f} / {r['pgd']['ssim']:.3f} | {picked('clean')}; {picked('pgd')} | "
            f"{paired[0]} | {paired[1]} |"
        )
    lines += [
        "",
        "The sign test is two-sided and exact over the images whose verdict differs between the two arms. "
        "The PGD images are regenerated on each run (same machine: bit-identical).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma list of arms; accepted: {', '.join(a.name for a in ARMS)}")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    known = {a.name: a for a in ARMS}
    wanted = [name for name in args.only.split(",") if name] or list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; accepted: {', '.join(known)}")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {
        a.name: json.loads((OUT / f"{a.name}.json").read_text()) for a in ARMS if (OUT / f"{a.name}.json").exists()
    }
    todo = [] if args.report_only else [known[n] for n in wanted if n not in results]
    data = attacked_images() if todo else None
    for arm in todo:
        results[arm.name] = run_arm(arm, data)
        atomic_write_text(OUT / f"{arm.name}.json", json.dumps(results[arm.name], indent=2) + "\n")
    text = report(results)
    atomic_write_text(OUT / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
