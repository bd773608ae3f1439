"""Gradient quality through a DIP defense (issue 39, item 5): on the same images, each
estimator's cosine similarity to a high-sample smoothed reference, and the loss change after
one sign step along it, through the true defense.

Estimators of the gradient of the victim's cross-entropy at the clean image x, through
victim(defense(x)), each with the evaluation's own seed (the attacker knows it):
- identity: BPDA with the identity backward (paper 002 App. A; 1 fit);
- rule: the rule-aware BPDA (``dip.rule_aware``; 1 fit);
- exact: the pathwise gradient through the unrolled fit (``dip.pathwise``; 1 fit + its backward);
- eot_noise: identity BPDA averaged over E draws of Gaussian input noise (E fits);
- nes: antithetic NES through the true defense, n pairs (2n fits);
- reference: NES with many more pairs at the same sigma, the gradient of the loss smoothed by
  N(0, sigma^2) noise, the quantity the smoothed estimators aim at. Its two halves' cosine is
  printed too: it bounds what any estimator's cosine to it can show.
The loss change: L(clip(x + a sign(g))) - L(x) through the true defense, a = eps/4 (one PGD step),
with a random sign direction as the baseline. Writes JSON and prints a table.

    python studies/gradient_quality.py --defense dip_stitch --num-images 8 --reference-pairs 32
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.cifar10 import CIFAR10DataModule  # noqa: E402
from dipdefense.attacks import build_attack  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.per_image_rng import global_draws  # noqa: E402
from dipdefense.defenses import build_defense  # noqa: E402
from dipdefense.defenses.defended import DefendedClassifier  # noqa: E402
from dipdefense.evaluation.attack_specs import parse_call  # noqa: E402
from dipdefense.evaluation.chunks import sample_indices  # noqa: E402
from dipdefense.nets import load_classifier  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def per_image_loss(defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(defended(x, idx).float(), y, reduction="none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="dip_stitch")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--eps", type=float, default=8, help="/255; the step is eps/4")
    p.add_argument("--nes-pairs", type=int, default=8)
    p.add_argument("--reference-pairs", type=int, default=32)
    p.add_argument("--sigma", type=float, default=1, help="NES and the reference's smoothing, /255")
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--estimators", default="identity,rule,exact,eot_noise,nes")
    p.add_argument("--out", default=str(REPO / "studies" / "gradient_quality.json"))
    args = p.parse_args()

    torch.manual_seed(0)
    name, options, _ = parse_call(args.defense, "--defense")
    defense = build_defense(name, **(options or {}))
    victim = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    data = CIFAR10DataModule(data_dir=os.environ.get("DIPDEF_CIFAR10")).load_split(False)
    indices = sample_indices(len(data), args.num_images, 0)  # the evaluation's first images (seed 0)
    x = torch.stack([data[i][0] for i in indices]).float()
    y = torch.tensor([int(data[i][1]) for i in indices])
    idx = torch.tensor(indices)
    defended = DefendedClassifier(victim, defense)
    eps, sigma = args.eps / 255, args.sigma / 255
    spec = {
        "identity": {},
        "rule": {"backward": "rule"},
        "exact": {"backward": "exact"},
        "eot_noise": {"eot": args.eot, "noise": sigma, "seed_draws": False},
        "nes": {"backward": "nes", "nes_samples": args.nes_pairs, "nes_sigma": sigma},
    }
    wanted = args.estimators.split(",")
    result: dict = {"defense": args.defense, "indices": indices, "eps": args.eps, "sigma": args.sigma}
    result["command"] = "python studies/gradient_quality.py " + " ".join(sys.argv[1:])
    grads, seconds = {}, {}
    with defended.bound_to(idx), global_draws():
        base = per_image_loss(defended, x, y, idx)
        for key in wanted:
            attack = build_attack("bpda_pgd", eps=eps, **spec[key])
            started = time.perf_counter()
            grads[key] = attack._gradient(defended, x, y, idx)
            seconds[key] = (time.perf_counter() - started) / len(x)
            print(f"{key}: {seconds[key]:.1f} s per image", flush=True)
        halves, started = [], time.perf_counter()
        for _ in range(2):
            attack = build_attack(
                "bpda_pgd", eps=eps, backward="nes", nes_samples=args.reference_pairs // 2, nes_sigma=sigma
            )
            halves.append(attack._nes_gradient(defended, x, y, idx))
        reference = (halves[0] + halves[1]) / 2
        seconds["reference"] = (time.perf_counter() - started) / len(x)
        rows = {}
        directions = {**grads, "reference": reference, "random": torch.randn_like(x)}
        for key, g in directions.items():
            stepped = (x + eps / 4 * g.sign()).clamp(0, 1)
            change = per_image_loss(defended, stepped, y, idx) - base
            rows[key] = {
                "norm": g.flatten(1).norm(dim=1).tolist(),
                "zero_share": (g == 0).flatten(1).float().mean(1).tolist(),
                "cosine_to_reference": cosine(g, reference).tolist(),
                "loss_change": change.tolist(),
                "seconds_per_image": seconds.get(key),
            }
        rows["identity"]["cosine_to_exact"] = (
            cosine(grads["identity"], grads["exact"]).tolist() if "exact" in grads else None
        )
        result["reference_halves_cosine"] = cosine(halves[0], halves[1]).tolist()
        result["base_loss"] = base.tolist()
    result["rows"] = rows
    print(f"reference halves' cosine: mean {sum(result['reference_halves_cosine']) / len(x):.3f}")
    print("| estimator | cosine to reference (mean) | loss change after one step (mean) | s/image |")
    for key, row in rows.items():
        mean_cos = sum(row["cosine_to_reference"]) / len(x)
        mean_change = sum(row["loss_change"]) / len(x)
        print(f"| {key} | {mean_cos:.3f} | {mean_change:+.3f} | {row['seconds_per_image'] or 0:.1f} |")
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
