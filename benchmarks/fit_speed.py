"""The DIP engine before and after issue 14's changes, measured side by side in one process.

    python benchmarks/fit_speed.py --batch-sizes 1,8,32,128 --rounds 5
    python benchmarks/fit_speed.py --batch-sizes 32 --stitch --rounds 1
    python benchmarks/fit_speed.py --batch-sizes 32 --stitch --separate --rounds 3

"before" is the engine as it was: Adam over every parameter tensor, glibc's default memory
handling, convolutions in PyTorch's native per-group loop. "after" is ``dip.engine.DIPFit``:
Adam over one flat buffer, freed memory kept warm (``retain_freed_cpu_memory``), grouped
convolutions as batched matrix products (``dip.skip_net.grouped_pointwise_conv`` for 1x1,
``GroupedIm2colConv`` for the others). Both compute the same numbers bit for bit (checked here on
every run). Absolute speeds on shared machines drift by 2x from minute to minute, so the two
are interleaved round by round and the ratio is the median of the per-round ratios.

``--stitch`` times the full dip_stitch defense (fit + victim mapping + stitching, T = 1000) on
real CIFAR-10 test images (``$DIPDEF_CIFAR10``) instead of fit steps; its "before" also runs the
rule's victim calls in the fit's native kernels, as the engine did before (``NativeKernelsObserver``).
"""

import argparse
import ctypes
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import dipdefense.dip.engine  # noqa: E402, F401
from benchmarks.profile_fit import LargestConv, forward_flops, images_for  # noqa: E402
from dipdefense import dip  # noqa: E402
from dipdefense.dip.engine import DIPFit, DIPSettings  # noqa: E402
from dipdefense.dip.skip_net import SamePadConv  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6")


# name: (Adam over one flat buffer, freed memory retained, convolutions as batched GEMMs)
VARIANTS = {
    "before": (False, False, False),
    "after": (True, True, True),
    "flat Adam only": (True, False, False),
    "retained memory only": (False, True, False),
    "batched-GEMM convs only": (False, False, True),
}
# The candidates for an opt-in fast mode: "after" with oneDNN's kernels (exact_cpu=False), which
# are not batch-invariant, without and with channels_last activations.
FAST_VARIANTS = {"oneDNN": False, "oneDNN + channels_last": True}


class VariantFit(DIPFit):
    """``DIPFit`` with each of issue 14's changes on or off; all off is the engine as it was
    (per-tensor Adam, gradients accumulated into each .grad, PyTorch's per-group native convolutions)."""

    def __init__(self, images: torch.Tensor, seeds: list[int], settings: DIPSettings, variant: str) -> None:
        fast = variant in FAST_VARIANTS
        super().__init__(images, seeds, dataclasses.replace(settings, exact_cpu=not fast))
        self.flat_adam, self.retain, self.batched_gemm_convs = VARIANTS["after" if fast else variant]
        self.bit_equal_expected = not fast
        if fast and FAST_VARIANTS[variant]:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.noise = self.noise.contiguous(memory_format=torch.channels_last)
        if not self.flat_adam:
            self.optimizer = torch.optim.Adam(self.params, lr=settings.lr)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        SamePadConv.batched_gemm = self.batched_gemm_convs
        try:
            return super().forward()
        finally:
            SamePadConv.batched_gemm = True

    def update(self, per_image_loss: torch.Tensor) -> None:
        if self.flat_adam:
            return super().update(per_image_loss)
        self.optimizer.zero_grad(set_to_none=True)
        per_image_loss.sum().backward()
        self.optimizer.step()


class BeforeFit(VariantFit):
    def __init__(self, images: torch.Tensor, seeds: list[int], settings: DIPSettings) -> None:
        super().__init__(images, seeds, settings, "before")


def memory_mode(after: bool) -> None:
    if after:
        LIBC.mallopt(-3, 32 << 20)
        LIBC.mallopt(-1, 1 << 30)
    else:  # glibc's defaults, and give back what the other mode kept
        LIBC.mallopt(-3, 128 << 10)
        LIBC.mallopt(-1, 128 << 10)
        LIBC.malloc_trim(0)


def steps_per_round(batch: int) -> int:
    return max(1, 16 // batch)


def fit_rows(batches: list[int], rounds: int, variants: list[str], data_dir: str | None) -> list[dict]:
    settings = DIPSettings(retain_cpu_memory=False)  # the benchmark switches memory modes itself
    rows = []
    for batch in batches:
        x = images_for(batch, data_dir)
        fits = {v: VariantFit(x, list(range(batch)), settings, v) for v in variants}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        exact = fits["after"].exact
        convs = {"engine": LargestConv(batch, exact), "native": LargestConv(batch, exact, batched=False)}
        conv_seconds: dict[str, list[float]] = {n: [] for n in convs}
        k = steps_per_round(batch)
        for _ in range(rounds):
            for name, conv in convs.items():
                conv_seconds[name].append(conv.seconds(k))
            for name, fit in fits.items():
                memory_mode(fit.retain)
                with fit.numerics():  # each fit in its own kernels: the fast variants run oneDNN's
                    _, loss = fit.forward()
                    fit.update(loss)
                    start = time.perf_counter()
                    for _ in range(k):
                        _, loss = fit.forward()
                        fit.update(loss)
                    seconds[name].append((time.perf_counter() - start) / k)
        outs = []
        for fit in fits.values():
            with fit.numerics():
                outs.append(fit.forward()[0].contiguous() if fit.bit_equal_expected else None)
        outs = [o for o in outs if o is not None]
        with fits["after"].numerics():
            flops = 3 * forward_flops(fits["after"])
        conv_gflops = {n: convs[n].gflops(statistics.median(s)) for n, s in conv_seconds.items()}
        rows.append(
            {
                "batch": batch,
                "ms_per_image_step": {n: 1e3 * statistics.median(s) / batch for n, s in seconds.items()},
                "gflops": {n: flops / statistics.median(s) / 1e9 for n, s in seconds.items()},
                "largest_conv_gflops": conv_gflops,
                # median over rounds of (before / variant): robust to the machine's drift between rounds
                "speedup": {
                    n: statistics.median(b / a for b, a in zip(seconds["before"], s, strict=True))
                    for n, s in seconds.items()
                },
                "bit_equal": all(torch.equal(outs[0], o) for o in outs[1:]),  # over the exact variants
            }
        )
    return rows


class NativeKernelsObserver:
    """A stitching rule observing in the fit's native kernels, as fit_dip ran its observer
    before 2026-12-03 (now it runs in the caller's, oneDNN on CPU)."""

    def __init__(self, rule: object) -> None:
        self.rule = rule

    def __call__(self, *args: object) -> object:
        with torch.backends.mkldnn.flags(enabled=False):
            return self.rule(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.rule, name)


def stitch_once(
    name: str, x: torch.Tensor, classifier: torch.nn.Module, **settings: object
) -> tuple[float, torch.Tensor]:
    """One timed dip_stitch purification of ``x`` with the "before" or "after" engine."""
    from dipdefense.defenses.dip_stitch import DIPStitch

    memory_mode(name == "after")
    dip.engine.DIPFit = BeforeFit if name == "before" else DIPFit  # fit_dip builds its fit by this name
    try:
        defense = DIPStitch(dip_batch=len(x), **settings)
        defense.dip.retain_cpu_memory = False
        if name == "before":
            rule = DIPStitch.make_rule
            defense.make_rule = lambda *a, d=defense: NativeKernelsObserver(rule(d, *a))
        start = time.perf_counter()
        result = defense.purify(x, classifier, torch.arange(len(x)))
        return time.perf_counter() - start, result
    finally:
        dip.engine.DIPFit = DIPFit


def stitch_rows(batches: list[int], rounds: int, data_dir: str | None, separate: bool = False) -> list[dict]:
    """``separate``: each timed purification in a fresh process of its own, after an untimed
    warm-up (a 200-iteration purification of the same images), so neither variant gains from
    the allocator state an older process has reached (the trend of the 2026-12-04 run)."""
    from dipdefense.nets import load_classifier

    classifier = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    rows = []
    for batch in batches:
        x = images_for(batch, data_dir)
        seconds: dict[str, list[float]] = {"before": [], "after": []}
        results = {}
        for _ in range(rounds):
            for name in ("before", "after"):
                if separate:
                    took, results[name] = stitch_in_own_process(name, batch, data_dir)
                else:
                    took, results[name] = stitch_once(name, x, classifier)
                seconds[name].append(took)
            # each round as it ends: a run stopped early still leaves its rounds
            before, after = seconds["before"][-1], seconds["after"][-1]
            print(f"B = {batch}, round {len(seconds['after'])}: before {before:.1f} s, after {after:.1f} s, "
                  f"ratio {before / after:.2f}", flush=True)  # fmt: skip
        ratios = [b / a for b, a in zip(seconds["before"], seconds["after"], strict=True)]
        fit_flops = 3 * forward_flops(DIPFit(x[:1], [0], DIPSettings())) * DIPSettings().iterations  # per image
        rows.append(
            {
                "batch": batch,
                "images_per_s": {n: batch / statistics.median(s) for n, s in seconds.items()},
                "fit_gflops_effective": {n: fit_flops * batch / statistics.median(s) / 1e9 for n, s in seconds.items()},
                "speedup": statistics.median(ratios),
                "round_ratios": ratios,
                "bit_equal": bool(torch.equal(results["before"], results["after"])),
            }
        )
        print(rows[-1], flush=True)
    return rows


def stitch_in_own_process(name: str, batch: int, data_dir: str | None) -> tuple[float, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        command = [sys.executable, __file__, "--stitch-one", name, "--batch-sizes", str(batch), "--out", str(out)]
        subprocess.run(command + (["--data-dir", data_dir] if data_dir else []), check=True)
        done = torch.load(out, weights_only=True)
    return float(done["seconds"]), done["result"]


def stitch_one(name: str, batch: int, data_dir: str | None, out: Path) -> None:
    """The child of ``--separate``: warm up, then one timed purification, saved to ``out``."""
    from dipdefense.nets import load_classifier

    classifier = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    x = images_for(batch, data_dir)
    stitch_once(name, x, classifier, iterations=200, observe_every=1)  # untimed warm-up
    seconds, result = stitch_once(name, x, classifier)
    torch.save({"seconds": seconds, "result": result}, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="1,8,32,128")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also time each change alone (flat Adam, retained memory, batched-GEMM convs)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="also time the fast-mode candidates (oneDNN kernels, with and without channels_last; not bit-equal)",
    )
    p.add_argument("--stitch", action="store_true", help="time the full dip_stitch defense, not fit steps")
    p.add_argument(
        "--separate",
        action="store_true",
        help="with --stitch: each timed purification in a fresh process after a warm-up",
    )
    p.add_argument("--stitch-one", choices=("before", "after"), help=argparse.SUPPRESS)  # --separate's child
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", default=os.environ.get("DIPDEF_CIFAR10"))
    args = p.parse_args()
    if args.stitch_one:
        stitch_one(args.stitch_one, int(args.batch_sizes), args.data_dir, args.out)
        return
    batches = [int(b) for b in args.batch_sizes.split(",")]
    args.ablate = [v for v in VARIANTS if v not in ("before", "after")] if args.ablate else []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.stitch:
        print(
            "| B | before images/s | after images/s | speedup | GFLOP/s (fit FLOPs / whole defense time) | bit-equal |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for r in stitch_rows(batches, args.rounds, args.data_dir, args.separate):
            ips, gf = r["images_per_s"], r["fit_gflops_effective"]
            print(
                f"| {r['batch']} | {ips['before']:.3f} | {ips['after']:.3f} | {r['speedup']:.2f}x | "
                f"{gf['before']:.1f} / {gf['after']:.1f} | {r['bit_equal']} |"
            )
        return
    fast = list(FAST_VARIANTS) if args.fast else []
    rows = fit_rows(batches, args.rounds, ["before", "after", *args.ablate, *fast], args.data_dir)
    print(
        "| B | variant | ms / image-step | speedup (median of rounds) | GFLOP/s / largest conv's "
        "(as the engine runs it) | bit-equal |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ref = r["largest_conv_gflops"]["engine"]
        print(
            f"| {r['batch']} | largest conv alone | | | engine {ref:.1f}, "
            f"PyTorch native {r['largest_conv_gflops']['native']:.1f} GFLOP/s | |"
        )
        for name, ms in r["ms_per_image_step"].items():
            print(
                f"| {r['batch']} | {name} | {ms:.2f} | {r['speedup'][name]:.2f}x | "
                f"{r['gflops'][name]:.1f} / {ref:.1f} = {r['gflops'][name] / ref:.2f} | "
                f"{'n/a (oneDNN)' if name in FAST_VARIANTS else r['bit_equal']} |"
            )


if __name__ == "__main__":
    main()
