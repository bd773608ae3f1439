"""Paper 004 on Fashion-MNIST: Table 1 (INC against FGSM and CW-L2 crafted on the unprotected
classifier) and the min-max attack's figures before and after robust training (Sec. 4.3).

    python studies/inc_table1.py --out runs/inc_table1

Runs evaluate.py four times (resumable: each has its own --out under ``--out``):
no defense, INC, the robust classifier alone, and INC with the robust classifier, all on the
same images and the same cached adversarial examples (crafted on the unprotected victim).
Then the min-max attack on both classifiers from the same starting pairs, and the pairs
found against the unprotected classifier fed to the robust one (the paper's 0.007 / 18%).
Writes results.md, results.json and minmax_convergence_<eta>.png (paper 004 Fig. 8) to ``--out``.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from dipdefense.common.atomic_files import atomic_write, atomic_write_text  # noqa: E402
from dipdefense.common.checkpoint_io import resolve_repo_path  # noqa: E402
from dipdefense.manifold import initial_pairs, minmax_attack, pair_statistics, summarise_pairs  # noqa: E402
from dipdefense.nets import load_classifier, load_vae  # noqa: E402

PAPER_TABLE1 = {"clean": (97, 84), "fgsm 0.05": (1, 82), "fgsm 0.1": (0, 80), "fgsm 0.2": (0, 73), "cw": (0, 77)}
PAPER_MINMAX = {"before": (0.93, 2.47, 0.57), "after": (1.00, 0.08, 0.22), "transfer": (None, 0.007, 0.18)}


def run_evaluations(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    common = ["--config", args.config, "--num-samples", str(args.num_samples)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    setups = {
        "none": ["--defense", "none", "--victim", args.victim],
        "inc": ["--victim", args.victim],
        "robust": ["--defense", "none", "--victim", args.robust, "--attack-victim", args.victim],
        "inc_robust": ["--victim", args.robust, "--attack-victim", args.victim],
    }
    rows = {}
    for name, extra in setups.items():
        print(f"== {name}", flush=True)
        rows[name] = evaluate.main([*common, *extra, "--out", str(args.out / name)])
    return rows


def run_minmax(
    args: argparse.Namespace, vae: nn.Module, victims: dict[str, nn.Module], eta2_per_pixel: float
) -> dict[str, Any]:
    """The attack on both classifiers ("before", "after") from the same starting pairs, at one
    eta; valid pairs are those below 2.5 eta^2 per pixel, the paper's ratio (5e-4 for 2e-4)."""
    settings = {"eta2_per_pixel": eta2_per_pixel, "valid_per_pixel": 2.5 * eta2_per_pixel, "lr": args.lr}
    settings |= {"lr_penalty": args.lr_penalty, "lr_middle": args.lr_middle}
    z, z_prime = initial_pairs(args.pairs, vae.latent_dim, args.init_spread, args.seed)
    results, histories, attacks = {}, {}, {}
    for name, classifier in victims.items():
        started = time.perf_counter()
        attack = minmax_attack(vae.decode, classifier, z, z_prime, steps=args.steps, log_every=50, **settings)
        results[name] = attack.summary() | {"seconds": time.perf_counter() - started}
        histories[name], attacks[name] = attack.history, attack
        print(f"min-max (eta^2 {eta2_per_pixel:g}/pixel) on the {name} classifier: {results[name]}", flush=True)
    # The pairs found against the unprotected classifier, judged by the robust one.
    first = attacks["before"]
    transfer = pair_statistics(vae.decode, victims["after"], first.z, first.z_prime, settings["valid_per_pixel"])
    results["transfer"] = summarise_pairs(transfer)
    return {
        "settings": settings | {"steps": args.steps, "pairs": args.pairs, "init_spread": args.init_spread},
        "results": results,
        "histories": histories,
    }


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def table1(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = "| input | no defense | INC | INC rejected | robust C | INC + robust C | paper 004 (CelebA): none / INC |"
    lines = [head, "|" + " --- |" * 7]
    by_setup = {name: {(r["attack"], r["eps"]): r for r in rs} for name, rs in rows.items()}
    for key in by_setup["none"]:
        attack, eps = key
        label = attack if eps is None else f"{attack} eps {eps:g} ({2 * eps:g} in [-1, 1])"
        paper = PAPER_TABLE1.get(attack if eps is None else f"{attack} {2 * eps:g}")
        cells = [_fmt(by_setup[s][key]["accuracy"], True) if key in by_setup[s] else "-" for s in ("none", "inc")]
        inc = by_setup["inc"].get(key)
        cells.append(_fmt(inc["rejected_share"], True) if inc else "-")
        cells += [
            _fmt(by_setup[s][key]["accuracy"], True) if key in by_setup[s] else "-" for s in ("robust", "inc_robust")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {f'{paper[0]}% / {paper[1]}%' if paper else '-'} |")
    return "\n".join(lines) + "\n"


def minmax_table(minmax: dict[str, Any]) -> str:
    s = minmax["settings"]
    lines = [
        f"eta^2 = {s['eta2_per_pixel']:g} per pixel (||G(z) - G(z')||_2 <= {math.sqrt(s['eta2_per_pixel'] * 784):.3g} "
        f"on 28x28), valid below {s['valid_per_pixel']:g}; {s['pairs']} pairs, {s['steps']} steps\n",
        "| min-max attack | pairs | valid | mean KL | different labels | paper 004: valid / KL / different |",
        "|" + " --- |" * 6,
    ]
    names = {
        "before": "on the unprotected C",
        "after": "on the robust C",
        "transfer": "pairs found on C, judged by robust C",
    }
    for key, title in names.items():
        r, paper = minmax["results"][key], PAPER_MINMAX[key]
        paper_text = " / ".join(
            "-" if v is None else (f"{100 * v:.0f}%" if i != 1 else f"{v:g}") for i, v in enumerate(paper)
        )
        lines.append(
            f"| {title} | {r['pairs']} | {_fmt(r['valid_share'], True)} | {_fmt(r['mean_kl'])} | "
            f"{_fmt(r['different_share'], True)} | {paper_text} |"
        )
    return "\n".join(lines) + "\n"


def plot_convergence(path: Path, histories: dict[str, list[dict[str, float]]], eta2_per_pixel: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, label in (("before", "unprotected C"), ("after", "robust C")):
        h = histories[name]
        ax.plot([p["step"] for p in h], [p["mean_gap_l2"] for p in h], label=label)
    ax.set_xlabel("min-max step")
    ax.set_ylabel("mean ||C(G(z)) - C(G(z'))||_2 (valid pairs)")
    ax.set_title(f"Min-max attack, eta^2 = {eta2_per_pixel:g} per pixel (paper 004, Fig. 8)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/inc_table1"))
    p.add_argument("--config", default="evaluate_inc_fmnist.yaml", help="evaluate.py config of the INC runs")
    p.add_argument("--victim", default="checkpoints/victim_fmnist_cnn.ckpt")
    p.add_argument("--robust", default="checkpoints/inc_robust_fmnist_cnn.ckpt")
    p.add_argument("--generator", default="checkpoints/vae_fmnist.ckpt")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--data-dir")
    p.add_argument("--pairs", type=int, default=256, help="min-max pairs (default: 256)")
    p.add_argument("--steps", type=int, default=10000, help="min-max steps (default: 10000, the paper's)")
    p.add_argument(
        "--eta2-per-pixel",
        default="5e-5,2e-3",
        help="comma list of eta^2 per pixel-channel in [0, 1] (default: the paper's 5e-5, and 2e-3, the "
        "robust training's)",
    )
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-middle", type=float, default=0.05)
    p.add_argument("--lr-penalty", type=float, default=1.0)
    p.add_argument("--init-spread", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-evaluations", action="store_true", help="only the min-max figures")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {} if args.skip_evaluations else run_evaluations(args)
    vae = load_vae(resolve_repo_path(args.generator)).requires_grad_(False)
    victims = {
        k: load_classifier(resolve_repo_path(p)).requires_grad_(False)
        for k, p in (("before", args.victim), ("after", args.robust))
    }
    minmax = [run_minmax(args, vae, victims, float(eta2)) for eta2 in args.eta2_per_pixel.split(",")]
    command = "python studies/inc_table1.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(
        args.out / "results.json", json.dumps({"command": command, "table1": rows, "minmax": minmax}, indent=2) + "\n"
    )
    md = [f"# Paper 004 on Fashion-MNIST\n\n{command}\n"]
    if rows:
        md += ["## Table 1: accuracy; attacks crafted on the unprotected classifier\n", table1(rows)]
    md.append("## Min-max attack (Eq. 9), the same starting pairs on both classifiers\n")
    md += [minmax_table(m) for m in minmax]
    atomic_write_text(args.out / "results.md", "\n".join(md))
    for m in minmax:
        eta2 = m["settings"]["eta2_per_pixel"]
        plot_convergence(args.out / f"minmax_convergence_{eta2:g}.png", m["histories"], eta2)
    print("\n".join(md))


if __name__ == "__main__":
    main()
