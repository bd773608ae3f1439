"""Paper 000 (Singh, Almeraz & Fang, DIP-trace stitching on ViT and VGG16), Table 1's shape:
each victim with no attack / PGD / FGSM / BIM at 8/255, bare and behind dip_stitch, on CIFAR-10
test images, the paper's figures beside ours.

    python studies/paper000_table1.py --out runs/paper000_table1
    python studies/paper000_table1.py --victims vgg16=checkpoints/victim_cifar_vgg16.ckpt --num-samples 100

The paper crafts its attacks with torchattacks on the victim (oblivious: the attacker does not
know the defense) and states no budget; its code (dalmeraz/Classification-DIP-Defense,
attack_model.py) runs torchattacks' PGD at eps 8/255 with 4 steps of 2/255. So PGD runs here
with ``--pgd-steps 4`` by default (evaluate.py's own default is 50: pass ``--pgd-steps 50`` for
the stronger attack), FGSM at 8/255 and BIM with torchattacks' defaults (10 steps of 2/255). Runs
evaluate.py twice per victim (``--defense none`` and ``--defense dip_stitch``), each into its own
folder under ``--out`` (resumable: rerun the same command), on the same seeded images, the
adversarial images crafted once on the bare victim and cached. Writes results.md and
results.json to ``--out``. Anything after ``--`` goes to every evaluate.py run
(``-- --batch-size 8 --defense_params.dip_stitch.iterations 500``).

Arguments (defaults): --victims (vgg16=checkpoints/victim_cifar_vgg16.ckpt,
vit=checkpoints/victim_cifar_vit.ckpt; NAME=SPEC, any evaluate.py --victim spec), --defense
(dip_stitch), --num-samples (100), --eps (8, in /255), --pgd-steps (4, the authors' code),
--data-dir (evaluate.py's default).
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.checkpoint_io import resolve_repo_path  # noqa: E402
from dipdefense.common.errors import UserError, run_main  # noqa: E402

ATTACKS = ("clean", "pgd", "fgsm", "bim")
# Table 1 of paper 000 (accuracy on CIFAR-10; its "Defense" is DIP-trace stitching).
PAPER_TABLE1 = {
    "vit": {"none": (0.93, 0.09, 0.52, 0.49), "defended": (0.50, 0.51, 0.53, 0.41)},
    "vgg16": {"none": (0.87, 0.82, 0.92, 0.92), "defended": (0.27, 0.14, 0.15, 0.19)},
}
DEFAULT_VICTIMS = "vgg16=checkpoints/victim_cifar_vgg16.ckpt,vit=checkpoints/victim_cifar_vit.ckpt"
TRAIN_COMMANDS = {
    "vgg16": "python train.py -c victim_cifar_vgg16 --export checkpoints/victim_cifar_vgg16.ckpt --export_dtype float16",
    "vit": "python train.py -c victim_cifar_vit --export checkpoints/victim_cifar_vit.ckpt",
}


def parse_victims(spec: str) -> dict[str, str]:
    """``"vgg16=a.ckpt,vit=b.ckpt"`` -> {"vgg16": "a.ckpt", "vit": "b.ckpt"}."""
    victims: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--victims: {item!r} is not NAME=SPEC; e.g. vgg16=checkpoints/victim_cifar_vgg16.ckpt")
        if name in victims:
            raise UserError(f"--victims: {name!r} is given twice")
        victims[name] = path
    if not victims:
        raise UserError("--victims: give at least one NAME=SPEC")
    return victims


def available(victims: dict[str, str]) -> dict[str, str]:
    """The victims whose checkpoint is at hand; a missing one is named with the command that trains
    it. Specs that are not files (``timm:NAME``, ``module:callable``) are left to evaluate.py."""
    found = {}
    for name, spec in victims.items():
        is_file_spec = spec.endswith((".ckpt", ".pt", ".pth"))
        if is_file_spec and not resolve_repo_path(spec).is_file():
            how = TRAIN_COMMANDS.get(name, "train it with train.py and --export")
            print(f"{name}: no checkpoint at {spec}; skipped (train it: {how})", file=sys.stderr)
            continue
        found[name] = spec
    if not found:
        raise UserError(
            "no victim checkpoint at hand: " + "; ".join(f"{n}: {TRAIN_COMMANDS.get(n, p)}" for n, p in victims.items())
        )
    return found


def run_evaluations(args: argparse.Namespace, victims: dict[str, str], extra: list[str]) -> dict[str, Any]:
    common = ["--attacks", ",".join(ATTACKS), "--eps", str(args.eps), "--num-samples", str(args.num_samples)]
    common += ["--attack_params.pgd.steps", str(args.pgd_steps)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    rows: dict[str, Any] = {}
    for name, spec in victims.items():
        for setup, defense in (("none", "none"), ("defended", args.defense)):
            out = args.out / f"{name}_{setup}"
            print(f"== {name}, defense {defense}: {out}", file=sys.stderr, flush=True)
            rows.setdefault(name, {})[setup] = evaluate.main(
                [*common, "--defense", defense, "--victim", spec, "--out", str(out), *extra]
            )
    return rows


def _cell(row: dict[str, Any] | None) -> str:
    if row is None or row.get("accuracy") is None or math.isnan(row["accuracy"]):
        return "-"
    return f"{row['accuracy']:.2f} ({row['accuracy_ci95_low']:.2f}-{row['accuracy_ci95_high']:.2f})"


def table1(rows: dict[str, Any], defense: str) -> str:
    """Paper 000 Table 1's rows, ours with 95% intervals, the paper's beside them."""
    head = "| model | " + " | ".join(a if a != "clean" else "no attack" for a in ATTACKS) + " | paper 000 | n |"
    lines = [head, "|" + " --- |" * (len(ATTACKS) + 3)]
    for name, setups in rows.items():
        for setup, found in setups.items():
            by_attack = {r["attack"]: r for r in found if r.get("threat_model") in ("oblivious", None)}
            label = name if setup == "none" else f"{name} + {defense}"
            paper = PAPER_TABLE1.get(name, {}).get(setup)
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) if paper else "-"
            n = max((r["n"] for r in found), default=0)
            cells = " | ".join(_cell(by_attack.get(a)) for a in ATTACKS)
            lines.append(f"| {label} | {cells} | {paper_cell} | {n} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/paper000_table1"))
    p.add_argument("--victims", default=DEFAULT_VICTIMS, help=f"NAME=SPEC,... (default: {DEFAULT_VICTIMS})")
    p.add_argument("--defense", default="dip_stitch", help="the defense of the '+ Defense' rows (default: dip_stitch)")
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget in /255 (default: 8)")
    p.add_argument("--pgd-steps", type=int, default=4, help="PGD steps of 2/255 (default: 4, the authors' code)")
    p.add_argument("--data-dir")
    args = p.parse_args(own)
    victims = available(parse_victims(args.victims))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_evaluations(args, victims, extra)
    command = shlex.join(["python", "studies/paper000_table1.py", *argv])
    atomic_write_text(args.out / "results.json", json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    md = [
        "# Paper 000, Table 1's shape: accuracy on CIFAR-10 test images\n",
        f"{command}\n",
        f"Attacks at {args.eps:g}/255 (PGD: {args.pgd_steps} steps of 2/255; BIM: 10), crafted on the "
        "bare victim (oblivious). Ours: accuracy (95% Wilson interval); paper 000: no attack / PGD / "
        "FGSM / BIM.\n",
        table1(rows, args.defense),
    ]
    atomic_write_text(args.out / "results.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    run_main(main)
