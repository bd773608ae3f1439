"""How far a DIP defense's verdict on a clean image depends on its seed (issue 39): the defense's
clean accuracy under several seeds, its spread, and per image in how many seeds the defended
victim is right.

    python studies/seed_consistency.py --defense "dip_stitch(pad=zero)" --seeds 1,2,3,4 \\
        --reuse 0=studies/adaptive_eval/runs/dip_stitch_zero_pad --num-samples 100

A DIP fit is seeded per image (the seed and the test index); a deployment that draws its seed per
query is a randomised defense, and even a fixed seed is chaotic in the input (DESIGN.md, "Threat
models"), so the spread over seeds is the least a DIP figure moves between runs, and an image
right under one seed and wrong under another is one an attacker can flip by resubmitting. Runs
``evaluate.py --attacks clean`` once per seed into ``--runs-dir/seed<K>`` (resumable: rerun the
same command); ``--reuse K=RUN`` reads seed K's clean records from an existing run of the same
defense and settings instead (its run.json must say seed K). Writes ``--out``.md and .json.
Anything after ``--`` goes to every evaluate.py run.

Arguments (defaults): --defense ("dip_stitch(pad=zero)"), --seeds (1,2,3,4), --reuse (none),
--num-samples (100), --batch-size (8), --runs-dir (runs/seed_consistency), --out
(studies/seed_consistency), --data-dir (evaluate.py's default).
"""

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.common.errors import UserError, run_main  # noqa: E402
from dipdefense.evaluation.compare import load_records  # noqa: E402
from dipdefense.evaluation.metrics import wilson_interval  # noqa: E402


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give integers, e.g. 1,2,3,4") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError(f"--seeds {text!r}: give distinct integers >= 0")
    return seeds


def parse_reuse(items: list[str]) -> dict[int, Path]:
    reuse: dict[int, Path] = {}
    for item in items:
        seed, sep, run = item.partition("=")
        if not sep or not seed.strip().isdigit() or not run:
            raise UserError(
                f"--reuse {item!r}: give SEED=RUN_FOLDER, e.g. 0=studies/adaptive_eval/runs/dip_stitch_zero_pad"
            )
        reuse[int(seed)] = Path(run)
    return reuse


def clean_verdicts(run: Path, seed: int) -> dict[int, bool]:
    """Test index -> defended victim right, from a run's clean records; the run must be seed ``seed``'s."""
    manifest = run / "run.json"
    if not manifest.is_file():
        raise UserError(f"--reuse {seed}={run}: no run.json there (an evaluate.py run folder)")
    recorded = json.loads(manifest.read_text()).get("defense_params", {}).get("seed")
    if recorded != seed:
        raise UserError(f"--reuse {seed}={run}: that run's defense seed is {recorded}, not {seed}")
    if not (run / "samples.jsonl").is_file() and not (run / "samples.jsonl.gz").is_file():
        raise UserError(f"{run}: no samples.jsonl(.gz): the run has no records yet")
    records = load_records(run)  # samples.jsonl, or the gzipped copy studies archive
    verdicts: dict[int, bool] = {}
    for r in records:
        if r["attack_name"] == "clean":
            verdicts.setdefault(r["index"], r["pred"] == r["label"])
    return verdicts


def check_same_setting(runs: dict[int, Path]) -> None:
    """Every seed's run must hold the same victim, data and defense settings but for the seed."""

    def setting(run: Path) -> dict[str, Any]:
        manifest = json.loads((run / "run.json").read_text())
        params = {k: v for k, v in manifest.get("defense_params", {}).items() if k != "seed"}
        return {k: manifest.get(k) for k in ("victim_sha256", "dataset", "defense")} | {"defense_params": params}

    settings = {seed: setting(run) for seed, run in runs.items()}  # each run.json read once
    first_seed = next(iter(runs))
    for seed, this in settings.items():
        differ = sorted(k for k in this if this[k] != settings[first_seed][k])
        if differ:
            raise UserError(
                f"seed {seed}'s run {runs[seed]} differs from seed {first_seed}'s {runs[first_seed]} in "
                f"{', '.join(differ)}: reuse only a run of the same victim, data and defense settings"
            )


def defense_with_seed(defense: str, seed: int) -> str:
    """``dip_stitch(pad=zero)`` -> ``dip_stitch(pad=zero,seed=3)``."""
    if "seed=" in defense:
        raise UserError(f"--defense {defense!r}: leave the seed out; --seeds sets it")
    if defense.endswith(")"):
        inner = defense[defense.index("(") + 1 : -1]
        return f"{defense[:-1]}{',' if inner else ''}seed={seed})"
    return f"{defense}(seed={seed})"


def common_images(verdicts: dict[int, dict[int, bool]]) -> list[int]:
    """The test indices every seed's run holds."""
    return sorted(set.intersection(*(set(v) for v in verdicts.values())))


def verdict_strings(verdicts: dict[int, dict[int, bool]]) -> dict[str, str]:
    """Per test index, its verdict under each seed in order as a string ("10111": wrong under the
    first seed only), over the images every seed has: the figures come back from these."""
    seeds = sorted(verdicts)
    common = common_images(verdicts)
    return {str(i): "".join("1" if verdicts[s][i] else "0" for s in seeds) for i in common}


def summarise(verdicts: dict[int, dict[int, bool]]) -> dict[str, Any]:
    """Per-seed accuracy and its spread; per image, the count of seeds right, over the images
    every seed has."""
    common = common_images(verdicts)
    if not common:
        raise UserError("the seeds' runs share no image")
    seeds = sorted(verdicts)
    accuracy = {s: sum(verdicts[s][i] for i in common) / len(common) for s in seeds}
    right_in = [sum(verdicts[s][i] for s in seeds) for i in common]
    histogram = {k: right_in.count(k) for k in range(len(seeds) + 1)}
    always, never = histogram[len(seeds)], histogram[0]
    flips = len(common) - always - never
    values = list(accuracy.values())
    low, high = wilson_interval(always, len(common))
    return {
        "images": len(common),
        "seeds": seeds,
        "accuracy": accuracy,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
        "min": min(values),
        "max": max(values),
        "right_in_k_seeds": histogram,
        "flipping_images": flips,
        "right_under_every_seed": always / len(common),
        "right_under_every_seed_ci95": [low, high],
        "right_under_some_seed": (len(common) - never) / len(common),
        # Seed pairs disagreeing on an image, averaged: how often two deployments differ.
        "pairwise_disagreement": statistics.fmean(
            sum(verdicts[a][i] != verdicts[b][i] for i in common) / len(common)
            for n, a in enumerate(seeds)
            for b in seeds[n + 1 :]
        )
        if len(seeds) > 1
        else math.nan,
    }


def report(summary: dict[str, Any], defense: str, command: str) -> str:
    seeds = summary["seeds"]
    n = summary["images"]
    lines = [
        f"# Clean verdicts of `{defense}` over {len(seeds)} seeds\n",
        f"{command}\n",
        f"{n} CIFAR-10 test images (evaluate.py's seeded sample), seeds {', '.join(map(str, seeds))}.\n",
        "| seed | " + " | ".join(map(str, seeds)) + " | mean (sd) | range |",
        "|" + " --- |" * (len(seeds) + 3),
        "| clean accuracy | "
        + " | ".join(f"{100 * summary['accuracy'][s]:.1f}%" for s in seeds)
        + f" | {100 * summary['mean']:.1f}% ({100 * summary['sd']:.1f}) | "
        f"{100 * summary['min']:.1f}-{100 * summary['max']:.1f}% |",
        "",
        "| right under k of the seeds | " + " | ".join(str(k) for k in range(len(seeds) + 1)) + " |",
        "|" + " --- |" * (len(seeds) + 2),
        "| images | " + " | ".join(str(summary["right_in_k_seeds"][k]) for k in range(len(seeds) + 1)) + " |",
        "",
        f"- Right under every seed: {100 * summary['right_under_every_seed']:.1f}% "
        f"(95% CI {100 * summary['right_under_every_seed_ci95'][0]:.1f}-"
        f"{100 * summary['right_under_every_seed_ci95'][1]:.1f}%): the clean accuracy against an attacker "
        "who resubmits the image under each seed (or a deployment that draws its seed per query).",
        f"- Right under some seed: {100 * summary['right_under_some_seed']:.1f}%.",
        f"- Images whose verdict changes with the seed: {summary['flipping_images']} of {n}; two seeds "
        f"disagree on {100 * summary['pairwise_disagreement']:.1f}% of the images on average.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="dip_stitch(pad=zero)")
    p.add_argument("--seeds", default="1,2,3,4", help="seeds to run (default: 1,2,3,4)")
    p.add_argument("--reuse", action="append", default=[], help="SEED=RUN: that seed's clean records from a run")
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/seed_consistency"))
    p.add_argument("--out", type=Path, default=REPO / "studies" / "seed_consistency")
    p.add_argument("--data-dir")
    args = p.parse_args(own)
    seeds, reuse = parse_seeds(args.seeds), parse_reuse(args.reuse)
    if set(seeds) & set(reuse):
        raise UserError(f"seed(s) {sorted(set(seeds) & set(reuse))} are both run and reused; give each once")
    verdicts = {seed: clean_verdicts(run, seed) for seed, run in reuse.items()}  # checked before any fit
    runs = dict(reuse)
    if len(seeds) + len(reuse) < 2:
        raise UserError("give at least two seeds in all (--seeds and --reuse)")
    common = ["--attacks", "clean", "--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    for seed in seeds:
        run = args.runs_dir / f"seed{seed}"
        print(f"== seed {seed}: {run}", file=sys.stderr, flush=True)
        evaluate.main([*common, "--defense", defense_with_seed(args.defense, seed), "--out", str(run), *extra])
        verdicts[seed] = clean_verdicts(run, seed)
        runs[seed] = run
    check_same_setting(runs)
    summary = summarise(verdicts)
    command = shlex.join(["python", "studies/seed_consistency.py", *argv])
    out = args.out
    atomic_write_text(
        out.with_suffix(".json"),
        json.dumps(
            {"command": command, "defense": args.defense, **summary, "verdicts": verdict_strings(verdicts)}, indent=2
        )
        + "\n",
    )
    text = report(summary, args.defense, command)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    run_main(main)
