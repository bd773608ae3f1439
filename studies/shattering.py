"""Where a DIP fit's shattering comes from (issue 39, item 4).

Conv biases that feed a BatchNorm have a true gradient of zero, and Adam's update
g / (sqrt(v) + eps) has slope lr / eps around g = 0, so such a parameter steps by about +-lr on
the sign of round-off (DIPSettings, "Why exact_cpu"). This measures, for dip_stitch's fit
(paper 002's CIFAR net, zero padding) and three variants (conv biases removed: network
``cifar_nobias``; Adam's eps raised to 1e-4; both):

A. the fit alone: how far an input change of 1e-5 in L2 moves x(t), for t = 1 ... 999 (one
   CIFAR-10 test image and the same image moved, one seed for both);
B. the defense: the central finite difference of the victim's loss through dip_stitch along one
   random unit direction, for steps 1e-2 ... 1e-6 (a smooth function's settles as the step shrinks),
   and the pathwise derivative along the same direction (``dip.pathwise``).

    python studies/shattering.py --index 0
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.cifar10 import CIFAR10DataModule  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.seeding import item_seed  # noqa: E402
from dipdefense.defenses import build_defense  # noqa: E402
from dipdefense.defenses.defended import DefendedClassifier  # noqa: E402
from dipdefense.dip.engine import fit_dip  # noqa: E402
from dipdefense.nets import load_classifier  # noqa: E402

VARIANTS = {
    "default": {},
    "no conv biases": {"network": "cifar_nobias"},
    "adam eps 1e-4": {"adam_eps": 1e-4},
    "both": {"network": "cifar_nobias", "adam_eps": 1e-4},
}
TIMES = (1, 4, 19, 49, 99, 199, 499, 999)
STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def fit_divergence(defense, image: torch.Tensor, index: int, h: float = 1e-5) -> dict[int, float]:
    d = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    moved = image + h * d / d.norm()
    seed = item_seed(defense.seed, index)
    seen: dict[int, float] = {}

    def observer(t, x, mse):
        if t in TIMES:
            seen[t] = (x[1] - x[0]).norm().item()

    settings = dataclasses.replace(defense.dip, observe_every=1)  # every t of TIMES observed
    fit_dip(torch.stack([image, moved]), [seed, seed], settings, observer)
    return seen


def finite_differences(victim, defense, image, label, index) -> dict:
    d = torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    d = d / d.norm()
    copies = [image] + [image + s * d for s in STEPS] + [image - s * d for s in STEPS]
    x = torch.stack(copies).clamp(0, 1)
    defended = DefendedClassifier(victim, defense)
    with defended.bound_to(torch.tensor([index])), torch.no_grad():
        loss = nn.functional.cross_entropy(defended(x).float(), label.repeat(len(x)), reduction="none")
    n = len(STEPS)
    fd = {str(s): ((loss[1 + i] - loss[1 + n + i]) / (2 * s)).item() for i, s in enumerate(STEPS)}
    exact = DefendedClassifier(victim, defense, gradient="exact")
    xg = image[None].clone().requires_grad_(True)
    with exact.bound_to(torch.tensor([index])):
        nn.functional.cross_entropy(exact(xg).float(), label[None]).backward()
    identity = DefendedClassifier(victim, defense)
    xi = image[None].clone().requires_grad_(True)
    with identity.bound_to(torch.tensor([index])):
        nn.functional.cross_entropy(identity(xi).float(), label[None]).backward()
    return {
        "loss": loss[0].item(),
        "finite_difference": fd,
        "pathwise": (xg.grad[0] * d).sum().item(),
        "pathwise_norm": xg.grad.norm().item(),
        "identity_bpda": (xi.grad[0] * d).sum().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=int, default=0, help="CIFAR-10 test image")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(REPO / "studies" / "shattering.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    victim = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    data = CIFAR10DataModule(data_dir=os.environ.get("DIPDEF_CIFAR10")).load_split(False)
    image, label = data[args.index][0].float(), torch.tensor(int(data[args.index][1]))
    result = {"index": args.index, "command": "python studies/shattering.py " + " ".join(sys.argv[1:]), "rows": {}}
    for name in args.variants.split(","):
        options = VARIANTS[name]
        row = {"options": options, "fit_divergence": fit_divergence(build_defense("dip_stitch", **options), image, 0)}
        row |= finite_differences(victim, build_defense("dip_stitch", **options), image, label, args.index)
        result["rows"][name] = row
        print(name, json.dumps(row), flush=True)
    print(f"image {args.index}: ||x|| = {image.norm():.1f}; input moved by 1e-5 in L2")
    print("| variant | " + " | ".join(f"x({t}) moved" for t in TIMES) + " |")
    for name, row in result["rows"].items():
        print(f"| {name} | " + " | ".join(f"{row['fit_divergence'][t]:.2g}" for t in TIMES) + " |")
    print("| variant | " + " | ".join(f"FD h={s:g}" for s in STEPS) + " | pathwise | identity BPDA |")
    for name, row in result["rows"].items():
        fd = " | ".join(f"{row['finite_difference'][str(s)]:.3g}" for s in STEPS)
        print(f"| {name} | {fd} | {row['pathwise']:.3g} | {row['identity_bpda']:.3g} |")
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
