"""Cost of defense-aware attacks: seconds per image per BPDA-PGD iteration and per 100
HopSkipJump queries through a defense, the batched DIP engine against one image at a time.

    python benchmarks/adaptive_cost.py --defense dip_stitch --batch-sizes 1,16 --device cpu
    python benchmarks/adaptive_cost.py --defense "dip_stitch(cuda_graph=true)" --batch-sizes 1,128 --device cuda
    python benchmarks/adaptive_cost.py --attack "bpda_pgd(backward=exact)" --batch-sizes 1,8   # issue 39's estimators

A BPDA iteration is one defense forward (a DIP fit) plus one victim backward; ``bpda_pgd``
with ``steps=1`` runs two iterates (the start with its gradient, then the step's verdict),
so its time is halved. An HSJ query is one defense forward of the whole attacked batch
(foolbox queries every image at each call), so 100 queries cost 100 forwards of the batch,
measured here as one forward (``--forwards``) and scaled. Each configuration runs in its own
process. Images are real CIFAR-10 test images when ``$DIPDEF_CIFAR10`` points at a copy.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(defense_name: str, batch: int, device: str, forwards: int, attack_spec: str = "bpda_pgd") -> dict:
    import torch

    from dipdefense.attacks import build_attack
    from dipdefense.defenses import build_defense
    from dipdefense.defenses.defended import DefendedClassifier
    from dipdefense.evaluation.attack_specs import parse_call
    from dipdefense.nets import load_classifier

    victim = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt", map_location=device)
    if os.environ.get("DIPDEF_CIFAR10"):
        from datamodules import CIFAR10DataModule

        test = CIFAR10DataModule(data_dir=os.environ["DIPDEF_CIFAR10"]).load_split(train=False)
        x, y = test.images[:batch].float().div(255).to(device), torch.as_tensor(test.labels[:batch]).to(device)
    else:
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
    name, options, _ = parse_call(defense_name, "--defense")  # a defense with options, as evaluate.py takes it
    defense = build_defense(name, **options).to(device)
    if hasattr(defense, "dip_batch"):
        defense.dip_batch = batch
    defended = DefendedClassifier(victim, defense)
    indices = torch.arange(batch)

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with defended.bound_to(indices):
        attack_name, attack_options, _ = parse_call(attack_spec, "--attack")
        attack = build_attack(attack_name, eps=8 / 255, **{**(attack_options or {}), "steps": 1})
        bpda = timed(lambda: attack(defended, x, y)) / 2
        with torch.no_grad():
            query = sum(timed(lambda: defended(x)) for _ in range(forwards)) / forwards
    return {
        "defense": defense_name,
        "attack": attack_spec,
        "batch": batch,
        "device": device,
        "s_per_image_per_bpda_iteration": bpda / batch,
        "s_per_image_per_100_hsj_queries": 100 * query / batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="dip_stitch", help="a name, or NAME(key=value,...) as evaluate.py takes it")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--forwards", type=int, default=1, help="defense forwards timed per HSJ estimate")
    p.add_argument(
        "--attack", default="bpda_pgd", help="the gradient attack timed, with options: 'bpda_pgd(backward=exact)'"
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "adaptive_cost.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.defense, int(args.one), args.device, args.forwards, args.attack)))
        return
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        cmd = [sys.executable, __file__, "--defense", args.defense, "--device", args.device]
        cmd += ["--forwards", str(args.forwards), "--attack", args.attack, "--one", str(batch)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    import torch

    from dipdefense.common.atomic_files import atomic_write_text

    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    meta = {"machine": machine, "cores": os.cpu_count(), "torch": torch.__version__}
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": []}
    previous["runs"] = [
        r
        for r in previous["runs"]
        if (r["defense"], r["device"], r.get("attack", "bpda_pgd")) != (args.defense, args.device, args.attack)
    ]
    previous["runs"] += rows
    previous["meta"] = meta
    atomic_write_text(Path(args.out), json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
