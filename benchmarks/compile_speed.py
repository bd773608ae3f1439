"""The DIP fit step eager, compiled and in the fast numerics, side by side in one process (issue 41).

    python benchmarks/compile_speed.py --batch-sizes 32 --rounds 5
    python benchmarks/compile_speed.py --batch-sizes 8,32 --modes eager,compile --rounds 3
    python benchmarks/compile_speed.py --batch-sizes 32 --stitch            # full dip_stitch, T = 1000
    python benchmarks/compile_speed.py --device cuda --batch-sizes 1,32,128,512 --rounds 5
    python benchmarks/compile_speed.py --invariance --modes eager,compile   # an image's fit vs its batch

Modes (``DIPSettings``): eager (the shipped engine: exact_cpu on a CPU), fast (``fast=True``),
compile (``compile=True``), compile+fast. For each B every mode gets its own fit of the same
images; each compiled mode's first step is timed apart and reported as its compile time (paid
once per process and shape: a second fit of the same shape reuses it, which is checked here).
Then rounds of k steps, the modes interleaved within each round, so that the machine's drift
falls on all of them alike; speedup = median over rounds of eager / mode. Drift: the relative
L2 distance of each mode's x(t) from the eager fit's after the timed steps (the fit is chaotic:
the size of a last-bit difference grown over those steps, not an error). ``--stitch``: the full
dip_stitch defense on real CIFAR-10 test images ($DIPDEF_CIFAR10), eager against each other
mode, after an untimed warm-up purification (which pays the compile).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.profile_fit import forward_flops, images_for  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.dip import compiled_step  # noqa: E402
from dipdefense.dip.compiled_step import CompiledStep  # noqa: E402
from dipdefense.dip.engine import DIPFit, DIPSettings, fit_dip  # noqa: E402

MODES = {
    "eager": {},
    "fast": {"fast": True},
    "compile": {"compile": True},
    "compile+fast": {"compile": True, "fast": True},
}
ZERO_PAD = {"pad": "zero"}  # the CIFAR network as dip_stitch runs it by default


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stepper(fit: DIPFit):
    return CompiledStep(fit) if fit.settings.compile else fit.step


def fit_rows(batches: list[int], rounds: int, modes: list[str], device: str, data_dir: str | None) -> list[dict]:
    rows = []
    for batch in batches:
        x = images_for(batch, data_dir).to(device)
        seeds = list(range(batch))
        fits, steps, compile_s = {}, {}, {}
        for mode in modes:
            settings = DIPSettings(network=ZERO_PAD, **MODES[mode])
            fits[mode] = DIPFit(x, seeds, settings)
            start = time.perf_counter()
            steps[mode] = stepper(fits[mode])
            steps[mode]()
            synchronize(device)
            compile_s[mode] = time.perf_counter() - start
        # a second fit of the same shape must find its compiled step cached
        compiled_before = len(compiled_step.compiled_steps)
        for mode in modes:
            if MODES[mode].get("compile"):
                again = DIPFit(x, seeds, fits[mode].settings)
                start = time.perf_counter()
                stepper(again)()
                synchronize(device)
                compile_s[f"{mode} (second fit)"] = time.perf_counter() - start
        reused = len(compiled_step.compiled_steps) == compiled_before
        k = max(2, 32 // batch) if device == "cpu" else 20
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode in modes:
                synchronize(device)
                start = time.perf_counter()
                for _ in range(k):
                    out, _ = steps[mode]()
                synchronize(device)
                seconds[mode].append((time.perf_counter() - start) / k)
        finals = {m: fits[m].forward()[0].detach().float() for m in modes}
        reference = finals.get("eager")
        with torch.no_grad(), fits[modes[0]].numerics():
            flops = 3 * forward_flops(DIPFit(x, seeds, DIPSettings(network=ZERO_PAD)))
        rows.append(
            {
                "batch": batch,
                "steps_timed": rounds * k + 1,
                "ms_per_image_step": {m: 1e3 * statistics.median(s) / batch for m, s in seconds.items()},
                "gflops": {m: flops / statistics.median(s) / 1e9 for m, s in seconds.items()},
                "speedup_over_eager": (
                    {
                        m: statistics.median(e / a for e, a in zip(seconds["eager"], s, strict=True))
                        for m, s in seconds.items()
                    }
                    if "eager" in seconds
                    else {}
                ),  # fmt: skip
                "first_step_s": compile_s,
                "compiled_step_reused": reused,
                "relative_drift_from_eager": (
                    {m: float((f - reference).norm() / reference.norm()) for m, f in finals.items()}
                    if reference is not None
                    else {}
                ),  # fmt: skip
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def invariance_rows(modes: list[str], device: str, data_dir: str | None, steps: int = 50) -> list[dict]:
    """Whether an image's fit depends on its batch: images 0-1 fitted as a batch of 2 and as the
    first two of a batch of 8, ``steps`` iterations, max |difference| of the last iterate."""
    x = images_for(8, data_dir).to(device)
    rows = []
    for mode in modes:
        settings = DIPSettings(network=ZERO_PAD, iterations=steps, **MODES[mode])
        alone = fit_dip(x[:2], [0, 1], settings)
        batched = fit_dip(x, list(range(8)), settings)[:2]
        rows.append({"mode": mode, "steps": steps, "max_abs_diff_2_vs_8": float((alone - batched).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stitch_rows(batches: list[int], modes: list[str], device: str, data_dir: str | None) -> list[dict]:
    from dipdefense.defenses.dip_stitch import DIPStitch
    from dipdefense.nets import load_classifier

    classifier = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt").to(device)
    rows = []
    for batch in batches:
        x = images_for(batch, data_dir).to(device)
        seconds, warmup, results = {}, {}, {}
        for mode in modes:
            defense = DIPStitch(dip_batch=batch, **MODES[mode])
            start = time.perf_counter()
            DIPStitch(dip_batch=batch, iterations=20, observe_every=1, **MODES[mode]).purify(
                x, classifier, torch.arange(batch)
            )
            synchronize(device)
            warmup[mode] = time.perf_counter() - start
            start = time.perf_counter()
            results[mode] = defense.purify(x, classifier, torch.arange(batch))
            synchronize(device)
            seconds[mode] = time.perf_counter() - start
            print(f"B = {batch}, {mode}: {seconds[mode]:.1f} s (warm-up {warmup[mode]:.1f} s)", flush=True)
        with torch.no_grad():
            labels = {m: classifier(r).argmax(1) for m, r in results.items()}
        rows.append(
            {
                "batch": batch,
                "images_per_s": {m: batch / s for m, s in seconds.items()},
                "warmup_s": warmup,
                "speedup_over_eager": {m: seconds["eager"] / s for m, s in seconds.items()}
                if "eager" in seconds
                else {},
                "labels_equal_to_eager": (
                    {m: int((lab == labels["eager"]).sum()) for m, lab in labels.items()} if "eager" in labels else {}
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--modes", default=",".join(MODES), help=f"any of {', '.join(MODES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--stitch", action="store_true", help="time the full dip_stitch defense, not fit steps")
    p.add_argument("--invariance", action="store_true", help="check batch invariance per mode, no timing")
    p.add_argument("--data-dir", default=os.environ.get("DIPDEF_CIFAR10"))
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}; accepted: {', '.join(MODES)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    if args.invariance:
        rows = invariance_rows(modes, args.device, args.data_dir)
    elif args.stitch:
        rows = stitch_rows(batches, modes, args.device, args.data_dir)
    else:
        rows = fit_rows(batches, args.rounds, modes, args.device, args.data_dir)
        print("| B | mode | ms / image-step | speedup over eager | first step (compile) s | drift from eager |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            for m, ms in r["ms_per_image_step"].items():
                print(
                    f"| {r['batch']} | {m} | {ms:.2f} | {r['speedup_over_eager'].get(m, float('nan')):.2f}x | "
                    f"{r['first_step_s'][m]:.1f} | {r['relative_drift_from_eager'].get(m, float('nan')):.2g} |"
                )
    if args.out:
        atomic_write_text(
            Path(args.out), json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
