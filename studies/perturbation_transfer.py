"""How much of an input perturbation each DIP iterate reproduces: the stand-in for dx(t)/dx0
that the rule-aware BPDA uses (``dip.rule_aware``; issue 39, item 3).

For held-out CIFAR-10 test images x0 and random-sign perturbations d at the L-inf budget, two
fits with the same seed, of x0 and of x0 + d, give
    s(t) = <x'(t) - x(t), d> / ||d||^2,
the fraction of d found in iterate t along d itself (1: the iterate moves with its input, as the
identity assumes; 0: it ignores the perturbation). A secant at the perturbation's own scale,
averaged over images, so it smooths over the fit's shattering. Prints the curve and writes it
as JSON (t, mean, std over images).

    python studies/perturbation_transfer.py --defense dip_stitch --num-images 8 --eps 8
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.cifar10 import CIFAR10DataModule  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.seeding import item_seed  # noqa: E402
from dipdefense.defenses import build_defense  # noqa: E402
from dipdefense.dip.engine import fit_dip  # noqa: E402


def transfer_curve(defense, images: torch.Tensor, indices: list[int], eps: float, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    d = eps * (torch.randint(0, 2, images.shape, generator=generator) * 2 - 1).float()
    perturbed = (images + d).clamp(0, 1)
    d = perturbed - images  # what the clamp left of it
    seeds = [item_seed(defense.seed, i) for i in indices]
    traces = []
    for x in (images, perturbed):
        seen = {}
        fit_dip(x, seeds, defense.dip, lambda t, xt, mse, seen=seen: seen.__setitem__(t, xt.clone()))
        traces.append(seen)
    norm = d.flatten(1).pow(2).sum(1)
    rows = []
    for t in sorted(traces[0]):
        s = ((traces[1][t] - traces[0][t]) * d).flatten(1).sum(1) / norm
        rows.append({"t": t, "mean": s.mean().item(), "std": s.std().item()})
    return {"eps": eps, "images": len(indices), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="dip_stitch", help="a DIP defense spec, e.g. 'dip_stitch(pad=zero)'")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--eps", type=float, default=8, help="L-inf budget in /255")
    p.add_argument("--out", default=str(REPO / "studies" / "perturbation_transfer.json"))
    args = p.parse_args()
    from dipdefense.evaluation.attack_specs import parse_call

    name, options, _ = parse_call(args.defense, "--defense")
    defense = build_defense(name, **(options or {}))
    data = CIFAR10DataModule(data_dir=os.environ.get("DIPDEF_CIFAR10")).load_split(False)
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[: args.num_images].tolist()
    images = torch.stack([data[i][0] for i in indices]).float()
    result = {"defense": args.defense, **transfer_curve(defense, images, indices, args.eps / 255)}
    result["command"] = "python studies/perturbation_transfer.py " + " ".join(sys.argv[1:])
    for row in result["rows"]:
        if row["t"] % 50 == 0 or row["t"] < 50 and row["t"] % 10 == 0:
            print(f"t = {row['t']:4d}  s = {row['mean']:.3f} +- {row['std']:.3f}")
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
