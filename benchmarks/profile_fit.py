"""Where one DIP fit step spends its time: torch.profiler over fit steps of paper 002's CIFAR
network at several batch sizes, per op category (forward, backward, Adam) and per convolution
layer, with the step's effective FLOP rate against its own largest convolution.

    python benchmarks/profile_fit.py --batch-sizes 1,8,32 --steps 20
    python benchmarks/profile_fit.py --batch-sizes 1,8,32 --conv-bound

``--conv-bound`` answers a narrower question: how close could the step come to its largest
convolution's rate if everything but the convolutions were free? It times every convolution
layer of the network alone (forward + backward, its own input shape, the engine's kernels)
and the whole step, interleaved round by round without the profiler.

The reference rate is the grouped 3x3 convolution at 32x32 (35 -> 32 channels per network, the
largest layer), forward and backward as the engine runs it, timed in the same process at the
same B. FLOPs are
counted on a forward pass (torch's FlopCounterMode over-counts grouped convolutions'
backward) and tripled for forward + backward. Images are real CIFAR-10 test images when
``$DIPDEF_CIFAR10`` (or ``--data-dir``) points at a copy, random otherwise.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.dip.engine import DIPFit, DIPSettings  # noqa: E402
from dipdefense.dip.skip_net import SamePadConv  # noqa: E402

PHASES = ("forward", "backward", "adam")
CATEGORIES = (
    ("convolution", ("conv", "bmm")),  # bmm: the batched-GEMM convolutions' backward (1x1)
    ("batchnorm", ("batch_norm", "batchnorm")),
    ("activation", ("leaky_relu", "leakyrelu", "sigmoid")),
    ("upsample", ("upsample",)),
    ("padding", ("pad",)),
    ("concat / crop / copy", ("cat", "slice", "view", "reshape", "copy", "clone", "contiguous", "unsafe")),
    ("loss", ("sub", "pow", "mean", "sum", "mul")),
    ("grad accumulation", ("accumulategrad",)),
)


def category(phase: str, name: str) -> str:
    if phase == "adam":
        return "adam"
    name = name.lower().removeprefix("autograd::engine::evaluate_function: ")
    for label, keys in CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other"


def label_convolutions(net: torch.nn.Module) -> None:
    """Wrap each convolution layer's forward in a profiler range named after its shape, so a
    layer shows up as one event whichever implementation (native or batched GEMM) runs it."""

    def enter(module: SamePadConv, args: tuple) -> None:
        c_in, c_out = module.conv.in_channels // module.conv.groups, module.conv.out_channels // module.conv.groups
        size = "x".join(map(str, args[0].shape[-2:]))
        module._profile_range = record_function(
            f"conv {c_in}->{c_out} ch, k{module.kernel} s{module.stride}, in {size}"
        )
        module._profile_range.__enter__()

    def leave(module: SamePadConv, args: tuple, output: torch.Tensor) -> None:
        module._profile_range.__exit__(None, None, None)

    for module in net.modules():
        if isinstance(module, SamePadConv):
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)


def images_for(batch: int, data_dir: str | None) -> torch.Tensor:
    if data_dir:
        from datamodules import CIFAR10DataModule

        test = CIFAR10DataModule(data_dir=data_dir).load_split(train=False)
        return test.images[:batch].float().div(255)
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def step(fit: DIPFit) -> None:
    with record_function("forward"):
        _, per_image = fit.forward()
    with record_function("backward"):
        fit.backward(per_image)
    with record_function("adam"):
        fit.optimizer.step()


def forward_flops(fit: DIPFit) -> int:
    with FlopCounterMode(display=False) as counter:
        fit.forward()
    return counter.get_total_flops()


LARGEST_CONV_FLOPS = 3 * 2 * 35 * 32 * 9 * 32 * 32  # per network, forward + backward


class LargestConv:
    """The fit's largest layer (grouped 3x3, 35 -> 32 channels per network at 32x32, with its
    reflection padding), forward + backward, as the engine runs it (``batched``) or through
    PyTorch's own per-group convolution."""

    def __init__(self, batch: int, exact: bool, batched: bool = True) -> None:
        self.batch, self.exact, self.batched = batch, exact, batched
        self.conv = SamePadConv(35, 32, 3, groups=batch)
        self.x = torch.randn(1, 35 * batch, 32, 32, requires_grad=True)
        self.seconds(3)

    def seconds(self, repeats: int) -> float:
        SamePadConv.batched_gemm = self.batched
        try:
            with torch.backends.mkldnn.flags(enabled=not self.exact):
                start = time.perf_counter()
                for _ in range(repeats):
                    self.conv(self.x).sum().backward()
                return (time.perf_counter() - start) / repeats
        finally:
            SamePadConv.batched_gemm = True

    def gflops(self, seconds: float) -> float:
        return LARGEST_CONV_FLOPS * self.batch / seconds / 1e9


def reference_conv_rate(batch: int, exact: bool, repeats: int = 20) -> float:
    """GFLOP/s of the largest layer as the engine runs it."""
    conv = LargestConv(batch, exact)
    return conv.gflops(conv.seconds(repeats))


def profile_batch(batch: int, steps: int, warmup: int, settings: DIPSettings, data_dir: str | None) -> dict:
    fit = DIPFit(images_for(batch, data_dir), list(range(batch)), settings)
    label_convolutions(fit.net)
    with fit.numerics():
        for _ in range(max(warmup, 1)):
            step(fit)
        # After a step: the first forward also runs the batched-convolution probe, which the counter would count.
        flops = 3 * forward_flops(fit)
        start = time.perf_counter()
        for _ in range(steps):
            step(fit)
        step_seconds = (time.perf_counter() - start) / steps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step(fit)
    by_category: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    calls: dict[str, int] = defaultdict(int)
    phase_total: dict[str, float] = defaultdict(float)
    conv_layers: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        if event.name in PHASES:
            phase_total[event.name] += event.cpu_time_total
            for child in event.cpu_children:
                by_category[category(event.name, child.name)][event.name] += child.cpu_time_total
                calls[event.name] += 1
        if event.name.startswith("conv "):
            conv_layers[event.name.removeprefix("conv ")]["forward"] += event.cpu_time_total
    per_step = 1e-3 / steps  # profiler microseconds summed over steps -> ms per step
    return {
        "batch": batch,
        "step_ms": step_seconds * 1e3,
        "ms_per_image_step": step_seconds * 1e3 / batch,
        "gflop_per_image_step": flops / batch / 1e9,
        "gflops": flops / step_seconds / 1e9,
        "reference_conv_gflops": reference_conv_rate(batch, fit.exact),
        "phase_ms": {p: phase_total[p] * per_step for p in PHASES},
        "ops_per_step": {p: calls[p] / steps for p in PHASES},
        "categories_ms": {c: {p: v[p] * per_step for p in PHASES} for c, v in by_category.items()},
        "conv_layers_forward_ms": {k: v["forward"] * per_step for k, v in conv_layers.items()},
    }


def stitch_share(batch: int, data_dir: str | None) -> dict:
    """The victim's share of a full dip_stitch run (T = 1000): time in the rule, observing
    (classifying the sampled iterates, SSIM) and searching the boundary (Eq. 4-5; in
    ``result()`` since the search is deferred), against the whole purify."""
    from dipdefense.defenses.dip_stitch import DIPStitch
    from dipdefense.dip.stitching import StitchRule
    from dipdefense.nets import load_classifier

    spent = {"rule": 0.0, "alpha_search": 0.0, "crossing_batches": 0}
    observe, search = StitchRule.__call__, StitchRule._on_boundary

    def timed_observe(rule: StitchRule, *args: object) -> None:
        start = time.perf_counter()
        observe(rule, *args)
        spent["rule"] += time.perf_counter() - start  # before the deferral, this included the search

    def timed_search(rule: StitchRule, *args: object) -> torch.Tensor:
        start = time.perf_counter()
        out = search(rule, *args)
        spent["alpha_search"] += time.perf_counter() - start
        spent["crossing_batches"] += 1
        return out

    classifier = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt")
    StitchRule.__call__, StitchRule._on_boundary = timed_observe, timed_search
    try:
        start = time.perf_counter()
        DIPStitch(dip_batch=batch).purify(images_for(batch, data_dir), classifier, torch.arange(batch))
        total = time.perf_counter() - start
    finally:
        StitchRule.__call__, StitchRule._on_boundary = observe, search
    return {"batch": batch, "seconds": total, **spent}


def conv_bound(batch: int, rounds: int, steps: int, settings: DIPSettings, data_dir: str | None) -> dict:
    """Step time against the same network's convolutions timed alone, layer by layer."""
    fit = DIPFit(images_for(batch, data_dir), list(range(batch)), settings)
    layers: list[tuple[SamePadConv, tuple[int, ...], bool]] = []

    def record(module: SamePadConv, args: tuple) -> None:
        # The network's first layer reads z, which needs no gradient unless z is optimised.
        layers.append((module, tuple(args[0].shape), args[0].requires_grad))

    hooks = [m.register_forward_pre_hook(record) for m in fit.net.modules() if isinstance(m, SamePadConv)]
    with fit.numerics():
        step(fit)
    for h in hooks:
        h.remove()
    with fit.numerics():
        step(fit)  # the probe of each layer shape ran in the first step
        flops = 3 * forward_flops(fit)
        inputs = [torch.randn(shape, requires_grad=grad) for _, shape, grad in layers]
        largest = LargestConv(batch, fit.exact)
        step_times, conv_times, largest_times = [], [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(steps):
                step(fit)
            step_times.append((time.perf_counter() - start) / steps)
            start = time.perf_counter()
            for _ in range(steps):
                for (module, _, _), x in zip(layers, inputs, strict=True):
                    out = module(x)
                    wrt = list(module.parameters()) + ([x] if x.requires_grad else [])
                    torch.autograd.grad(out, wrt, torch.ones_like(out))
            conv_times.append((time.perf_counter() - start) / steps)
            largest_times.append(largest.seconds(steps))
    step_s, conv_s, largest_s = (statistics.median(v) for v in (step_times, conv_times, largest_times))
    largest_rate = largest.gflops(largest_s)
    return {
        "batch": batch,
        "conv_layers": len(layers),
        "step_ms": step_s * 1e3,
        "convs_alone_ms": conv_s * 1e3,
        "step_gflops": flops / step_s / 1e9,
        "convs_alone_gflops": flops / conv_s / 1e9,
        "largest_conv_gflops": largest_rate,
    }


def conv_bound_report(rows: list[dict]) -> str:
    lines = [
        "| B | step ms | convs alone ms | convs' share | step / largest conv | bound: convs alone / largest conv |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['step_ms']:.2f} | {r['convs_alone_ms']:.2f} | "
            f"{100 * r['convs_alone_ms'] / r['step_ms']:.0f}% | {r['step_gflops'] / r['largest_conv_gflops']:.2f} | "
            f"{r['convs_alone_gflops'] / r['largest_conv_gflops']:.2f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        ratio = r["gflops"] / r["reference_conv_gflops"]
        lines += [
            f"\nB = {r['batch']}: {r['step_ms']:.1f} ms per step, {r['ms_per_image_step']:.2f} ms per image-step, "
            f"{r['gflops']:.1f} GFLOP/s effective ({r['gflop_per_image_step'] * 1e3:.0f} MFLOP per image-step); "
            f"largest conv alone {r['reference_conv_gflops']:.1f} GFLOP/s (ratio {ratio:.2f}); "
            "top-level ops per step: " + ", ".join(f"{p} {n:.0f}" for p, n in r["ops_per_step"].items()),
            "",
            "| category | forward ms | backward ms | adam ms | share of step |",
            "| --- | --- | --- | --- | --- |",
        ]
        total = sum(r["phase_ms"].values())
        ordered = sorted(r["categories_ms"].items(), key=lambda kv: -sum(kv[1].values()))
        for name, ms in ordered:
            share = sum(ms.values()) / total
            lines.append(
                f"| {name} | {ms['forward']:.2f} | {ms['backward']:.2f} | {ms['adam']:.2f} | {100 * share:.1f}% |"
            )
        unattributed = {p: r["phase_ms"][p] - sum(ms[p] for ms in r["categories_ms"].values()) for p in PHASES}
        share = sum(unattributed.values()) / total
        lines.append(
            f"| Python / dispatch between ops | {unattributed['forward']:.2f} | {unattributed['backward']:.2f} | "
            f"{unattributed['adam']:.2f} | {100 * share:.1f}% |"
        )
        lines += ["", "| conv layer (per network; padding included) | forward ms |", "| --- | --- |"]
        for name, ms in sorted(r["conv_layers_forward_ms"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data-dir", default=os.environ.get("DIPDEF_CIFAR10"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "profile_fit.json"))
    p.add_argument("--stitch-share", action="store_true", help="the victim's share of a full dip_stitch run instead")
    p.add_argument("--conv-bound", action="store_true", help="the step against its convolutions timed alone")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds of --conv-bound (median)")
    args = p.parse_args()
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if args.conv_bound:
        rows = [
            conv_bound(int(b), args.rounds, args.steps, DIPSettings(), args.data_dir)
            for b in args.batch_sizes.split(",")
        ]
        print(machine)
        print(conv_bound_report(rows))
        return
    if args.stitch_share:
        for b in args.batch_sizes.split(","):
            r = stitch_share(int(b), args.data_dir)
            victim = r["rule"] + r["alpha_search"]
            print(
                f"B = {r['batch']}: {r['seconds']:.1f} s; the rule's victim work {victim:.1f} s "
                f"({100 * victim / r['seconds']:.1f}%): observing {r['rule']:.1f} s, the alpha search "
                f"{r['alpha_search']:.1f} s over {r['crossing_batches']} batches of crossings"
            )
        return
    settings = DIPSettings()
    rows = [
        profile_batch(int(b), args.steps, args.warmup, settings, args.data_dir) for b in args.batch_sizes.split(",")
    ]
    atomic_write_text(Path(args.out), json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(machine)
    print(report(rows))


if __name__ == "__main__":
    main()
