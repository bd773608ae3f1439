"""Where does dip_stitch's decision trace fail, and how much do tau, t0, K, beta and the
sampling interval matter? Measured on *training-split* images (the victim's held-out
validation part), never on the test images the README's figures come from.

    python studies/dip_stitch_sensitivity.py --num-images 64

Each image (clean, and its PGD-50 eps=8/255 version) is fitted once with the paper's CIFAR
DIP (T=1000) and *every* iterate is kept (cached on disk, 12 MB per image); each rule
setting then replays the recorded traces through ``dip.stitching.StitchRule`` on the
schedule ``fit_dip`` uses (``dip.engine.replay_trace``), so a setting costs victim calls
only. Writes studies/dip_stitch_sensitivity.{json,md,png}.
"""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules import CIFAR10DataModule  # noqa: E402
from dipdefense.attacks import build_attack  # noqa: E402
from dipdefense.common.atomic_files import atomic_torch_save, atomic_write, atomic_write_text  # noqa: E402
from dipdefense.common.data_paths import cache_root  # noqa: E402
from dipdefense.common.seeding import item_seed  # noqa: E402
from dipdefense.common.ssim import per_image_ssim  # noqa: E402
from dipdefense.defenses.dip_purifier import DIP_NETWORKS  # noqa: E402
from dipdefense.dip.engine import DIPSettings, fit_dip, replay_trace  # noqa: E402
from dipdefense.dip.skip_net import skip  # noqa: E402
from dipdefense.dip.stitching import StitchRule, StitchSettings  # noqa: E402
from dipdefense.nets import load_classifier  # noqa: E402

PAPER = {"tau": 0.7, "t0": 50, "k": 15, "beta": 0.5, "observe_every": 5}
# One knob at a time around the paper's values; t0 = 250 iterations is t0 = 50 if t counts
# the 200 sampled images at T = 1000.
SWEEP: list[dict[str, Any]] = [
    {},
    *({"tau": v} for v in (0.5, 0.6, 0.8, 0.9)),
    *({"t0": v} for v in (0, 10, 25, 100, 250)),
    *({"k": v} for v in (1, 5, 30)),
    *({"beta": v} for v in (0.0, 0.25, 1.0)),
    *({"observe_every": v} for v in (1, 2, 10)),
]
FIXED_ITERATIONS = (50, 100, 200, 500, 999)


POOLS = ("held_out", "trained")
POOL_TEXT = {"held_out": "the victim's held-out validation part", "trained": "the part the victim was trained on"}


def pick_images(num: int, seed: int, pool: str = "held_out") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` images of the training split drawn with ``seed``: from its validation part
    (VictimClassifier's seed-0 hold-out of 5,000, ``pool="held_out"``) or from the 45,000 the
    shipped victims were trained on (``"trained"``, for the memorised-images comparison of
    issue 12). Returns images, labels, train indices."""
    if pool not in POOLS:
        raise ValueError(f"unknown image pool {pool!r}; accepted: {', '.join(POOLS)}")
    split = CIFAR10DataModule(val_size=5000, seed=0)  # the shipped victims' own split
    split.setup("fit")
    part = torch.tensor((split.val_set if pool == "held_out" else split.train_set).indices)
    chosen = part[torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:num]]
    train = split.val_set.dataset
    return train.images[chosen].float().div(255), train.labels[chosen], chosen


def repo_relative(arg: str) -> str:
    """A path under the repository as the user would type it from its root (for the recorded command)."""
    prefix = f"{REPO}/"
    return arg[len(prefix) :] if arg.startswith(prefix) else arg


def flat_engine(engine: dict[str, Any]) -> dict[str, Any]:
    """Engine options with the network's changes lifted to the top ({"network": {"pad": "zero"}} ->
    {"pad": "zero"}), for cache names and reports."""
    return {**{k: v for k, v in engine.items() if k != "network"}, **engine.get("network", {})}


def record_traces(
    images: torch.Tensor, seeds: list[int], iterations: int, batch: int, engine: dict[str, Any] | None = None
) -> torch.Tensor:
    """Every iterate of every image's DIP fit, [T, N, C, H, W] (with ``output_ema``, the averages).
    ``engine``: ``DIPSettings`` fields changed from paper 002's (e.g. input_jitter, output_ema); its
    "network", if any, changes only the named arguments of paper 002's CIFAR network (e.g. pad)."""
    engine = dict(engine or {})
    network = {**DIP_NETWORKS["cifar"], **engine.pop("network", {})}
    settings = DIPSettings(network=network, iterations=iterations, observe_every=1, **engine)
    out = torch.empty(iterations, *images.shape)
    for start in range(0, len(images), batch):
        part = slice(start, start + batch)

        def keep(t: int, x: torch.Tensor, mse: torch.Tensor, part: slice = part) -> None:
            out[t, part] = x

        fit_dip(images[part], seeds[part], settings, keep)
        print(f"  fitted {min(start + batch, len(images))}/{len(images)}", flush=True)
    return out


def evaluate_setting(
    traces: torch.Tensor, inputs: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, classifier, knobs: dict
) -> dict[str, Any]:
    knobs = {**PAPER, **knobs}
    rule_settings = StitchSettings(
        tau=knobs["tau"], t0=knobs["t0"], k=knobs["k"], beta=knobs["beta"], search=knobs.get("search", "grid")
    )
    outputs, crossings = [], []
    for start in range(0, inputs.shape[0], 32):
        part = slice(start, start + 32)
        rule = StitchRule(inputs[part], classifier, rule_settings)
        replay_trace(traces[:, part], rule, inputs[part], knobs["observe_every"], observe_tail=knobs["k"])
        outputs.append(rule.result())
        crossings.append(rule.crossings)
    return summarise(torch.cat(outputs), clean, labels, classifier, torch.cat(crossings))


@torch.no_grad()
def summarise(
    outputs: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, classifier, crossings: torch.Tensor | None = None
) -> dict[str, Any]:
    correct = classifier(outputs).argmax(1) == labels
    row: dict[str, Any] = {
        "accuracy": correct.float().mean().item(),
        "ssim": per_image_ssim(outputs, clean).mean().item(),
        "correct": "".join("1" if c else "0" for c in correct.tolist()),  # per image: arms compare image by image
    }
    if crossings is not None:
        has = crossings > 0
        row |= {
            "with_crossing": has.float().mean().item(),
            "accuracy_with_crossing": correct[has].float().mean().item() if has.any() else None,
            "accuracy_fallback": correct[~has].float().mean().item() if (~has).any() else None,
            "mean_crossings": crossings.float().mean().item(),
        }
    return row


def label_changes(traces: torch.Tensor, classifier, labels: torch.Tensor, every: int = 1) -> dict[str, Any]:
    """Trace statistics on the iterates seen every ``every`` steps: label changes per image,
    the last iteration at which the label changed, and whether the true label ever appears."""
    with torch.no_grad():
        predicted = torch.stack([classifier(traces[t]).argmax(1) for t in range(0, len(traces), every)])
    changes = (predicted[1:] != predicted[:-1]).int()
    last_change = torch.tensor(
        [(c.nonzero().max().item() + 1) * every if c.any() else 0 for c in changes.T], dtype=torch.float
    )
    return {
        "mean_label_changes": changes.sum(0).float().mean().item(),
        "no_label_change": (changes.sum(0) == 0).float().mean().item(),
        "median_last_change_iteration": last_change.median().item(),
        "true_label_ever": (predicted == labels).any(0).float().mean().item(),
        # The distribution, and the victim's accuracy on x(t) for every t seen: how stably it
        # decides on the blurry early iterates (issue 12, hypothesis 1).
        "last_change_iterations": last_change.int().tolist(),
        "accuracy_by_iteration": {
            str(t * every): v for t, v in enumerate((predicted == labels).float().mean(1).tolist())
        },
    }


def plot_traces(result: dict[str, Any], path: Path) -> None:
    """The victim's accuracy on x(t) against t, and the share of images whose label has
    stopped changing by t (clean and PGD), with the rule's t0 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind, stats in result["trace_stats"].items():
        ts = [int(t) for t in stats["accuracy_by_iteration"]]
        left.plot(ts, list(stats["accuracy_by_iteration"].values()), label=kind)
        last = sorted(stats["last_change_iterations"])
        right.step(last, [(i + 1) / len(last) for i in range(len(last))], where="post", label=kind)
    for ax, title in ((left, "victim accuracy on x(t)"), (right, "labels settled by t (CDF of the last change)")):
        ax.axvline(PAPER["t0"], color="grey", linestyle=":", label="t0")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("iteration t")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlim(left=0)
    left.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# dip_stitch on training-split images",
        "",
        f"{result['num_images']} images from {POOL_TEXT[result.get('pool', 'held_out')]} of the CIFAR-10 training split, "
        f"clean and PGD-{result.get('pgd_steps', 50)} eps=8/255; paper 002's CIFAR DIP, T={result['iterations']}"
        + "".join(f", {k} {v}" for k, v in flat_engine(result.get("engine", {})).items())
        + "; "
        f"victim {result['victim']}. Command: `{result['command']}` ({result['minutes']:.0f} min, {result['machine']}).",
        "",
        "Undefended victim: clean {clean:.1%}, PGD {pgd:.1%}.".format(**result["undefended"]),
        "",
        "## Traces",
        "",
        "| input | label changes / image | images with none | median last change (iteration) | true label ever on trace |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, s in result["trace_stats"].items():
        lines.append(
            f"| {kind} | {s['mean_label_changes']:.1f} | {s['no_label_change']:.0%} | "
            f"{s['median_last_change_iteration']:.0f} | {s['true_label_ever']:.0%} |"
        )
    if "figure" in result:
        lines += ["", f"![victim accuracy on x(t); labels settled by t]({result['figure']})"]
    lines += ["", "## Fixed iterations (no rule)", "", "| iterate | clean acc | clean SSIM | PGD acc | PGD SSIM |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for t, r in result["fixed_iterations"].items():
        lines.append(
            f"| x({t}) | {r['clean']['accuracy']:.1%} | {r['clean']['ssim']:.3f} | "
            f"{r['pgd']['accuracy']:.1%} | {r['pgd']['ssim']:.3f} |"
        )
    lines += [
        "",
        "## Rule settings (one knob changed from the paper's tau 0.7, t0 50, K 15, beta 0.5, every 5th iterate)",
        "",
        "| change | clean acc | clean SSIM | PGD acc | PGD SSIM | PGD with crossing | PGD acc with / without crossing "
        "| clean with crossing | clean acc with / without crossing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    for r in result["sweep"]:
        c, p = r["clean"], r["pgd"]
        change = ", ".join(f"{k}={v}" for k, v in r["change"].items()) or "paper"
        lines.append(
            f"| {change} | {c['accuracy']:.1%} | {c['ssim']:.3f} | {p['accuracy']:.1%} | {p['ssim']:.3f} | "
            f"{pct(p['with_crossing'])} | {pct(p['accuracy_with_crossing'])} / {pct(p['accuracy_fallback'])} | "
            f"{pct(c['with_crossing'])} | {pct(c['accuracy_with_crossing'])} / {pct(c['accuracy_fallback'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="held_out",
        help="training-split images the victim never saw (held_out, the default) or was trained on (trained)",
    )
    p.add_argument("--victim", default=str(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt"))
    p.add_argument("--out", default=str(REPO / "studies" / "dip_stitch_sensitivity"))
    p.add_argument(
        "--settings",
        type=json.loads,
        default=None,
        help='JSON list of changes to run instead of the built-in sweep, e.g. \'[{"search": "bisection"}]\'',
    )
    p.add_argument(
        "--pgd-steps", type=int, default=50, help="PGD steps of the attacked images (torchattacks' default is 10)"
    )
    p.add_argument(
        "--engine",
        type=json.loads,
        default={},
        help="JSON object of DIP fitting options changed from paper 002's, for every trace "
        '(dip.engine.DIPSettings), e.g. \'{"input_jitter": 0.0333, "output_ema": 0.99}\'; "network" changes '
        'arguments of the CIFAR network (dip.skip_net.skip), e.g. \'{"network": {"pad": "zero"}}\'',
    )
    args = p.parse_args()
    try:
        DIPSettings(**args.engine)
        skip(**{**DIP_NETWORKS["cifar"], **args.engine.get("network", {})})
    except (TypeError, ValueError) as err:
        p.error(f"--engine: {err}; its fields: {', '.join(f.name for f in dataclasses.fields(DIPSettings))}")
    started = time.time()
    torch.manual_seed(args.seed)
    classifier = load_classifier(args.victim)
    clean, labels, indices = pick_images(args.num_images, args.seed, args.pool)
    adversarial = build_attack("pgd", eps=8 / 255, steps=args.pgd_steps)(classifier, clean, labels)
    inputs = {"clean": clean, "pgd": adversarial}
    seeds = [item_seed(7, i) for i in indices]  # a seed namespace of its own
    # One cache per input kind: the clean fits do not depend on the victim or the attack, so
    # arms and victims that change only those share them.
    arm = "".join(f"_{k}{v}" for k, v in sorted(flat_engine(args.engine).items()))
    attack = {"clean": "", "pgd": f"_pgd{args.pgd_steps}_{Path(args.victim).stem}"}
    traces = {}
    pool = "" if args.pool == "held_out" else f"_{args.pool}"  # held-out names predate the option
    for kind, x in inputs.items():
        name = f"stitch_traces_n{args.num_images}_s{args.seed}{pool}_T{args.iterations}{arm}_{kind}{attack[kind]}.pt"
        cache = cache_root() / "studies" / name
        if cache.exists():
            traces[kind] = torch.load(cache, weights_only=True)
            continue
        print(f"fitting {kind} images", flush=True)
        traces[kind] = record_traces(x, seeds, args.iterations, batch=32, engine=args.engine)
        atomic_torch_save(traces[kind], cache)
    with torch.no_grad():
        undefended = {k: (classifier(x).argmax(1) == labels).float().mean().item() for k, x in inputs.items()}
    result: dict[str, Any] = {
        "num_images": args.num_images,
        "pool": args.pool,
        "iterations": args.iterations,
        "engine": args.engine,
        "pgd_steps": args.pgd_steps,
        "victim": Path(args.victim).name,
        "command": shlex.join(["python", "studies/dip_stitch_sensitivity.py", *map(repo_relative, sys.argv[1:])]),
        "machine": "2-core CPU",
        "undefended": undefended,
        "trace_stats": {k: label_changes(traces[k], classifier, labels) for k in inputs},
        "fixed_iterations": {
            t: {k: summarise(traces[k][t], clean, labels, classifier) for k in inputs}
            for t in FIXED_ITERATIONS
            if t < args.iterations
        },
        "sweep": [],
    }
    for knobs in args.settings if args.settings is not None else SWEEP:
        row = {"change": knobs}
        for kind, x in inputs.items():
            row[kind] = evaluate_setting(traces[kind], x, clean, labels, classifier, knobs)
        result["sweep"].append(row)
        print(
            json.dumps({"change": knobs, **{k: round(row[k]["accuracy"], 3) for k in inputs}}),
            flush=True,
        )
    result["minutes"] = (time.time() - started) / 60
    result["figure"] = Path(args.out).with_suffix(".png").name
    plot_traces(result, Path(args.out).with_suffix(".png"))
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
