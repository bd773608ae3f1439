"""The DIP engine on a GPU: host syncs inside the fit loop, batch invariance, fit-step speed
against the fit's own largest convolution, and the full dip_stitch defense (issue 14).

    python benchmarks/gpu_checks.py --out benchmarks/gpu_checks.json
    python benchmarks/gpu_checks.py --sections graph --out benchmarks/gpu_graph.json
    python benchmarks/gpu_checks.py --device cpu --batch-sizes 1,8 --steps 5   # a dry run

Syncs: the dip_stitch defense runs under ``torch.cuda.set_sync_debug_mode("warn")`` and every
synchronizing call is counted by the Python line that made it. A loop that syncs once per
iteration shows ~T of them; the engine is meant to sync only at its early-stop checks (every
25th observation on a GPU) and outside the loop. Speed: fit steps (forward, loss, backward,
Adam) of B stacked networks, TF32 on (PyTorch's default for cuDNN convolutions) and off;
GFLOP/s effective counts 3x a forward pass's FLOPs (FlopCounterMode over-counts grouped
backward); the largest convolution (grouped 3x3, 35 -> 32 channels at 32x32, fwd + bwd) is
timed in the same process for the ratio issue 14 asks for. Graph: the same fit steps eager
and replayed as one CUDA graph (``DIPSettings.cuda_graph``), how far the two fits drift apart
in 200 steps (against the batch-invariance drift, the GPU's own noise), and full dip_stitch
with and without the graph. Nothing here is a test: the CPU run is only a dry run of the
script (the graph section is CUDA only). Issue 41's sections: modes (fit steps and full
dip_stitch eager, fast, compiled, compiled + fast; ``benchmarks/compile_speed.py``), agreement
(the fast mode's verdicts against the exact mode's on the README's 200 images, clean and PGD-8,
paired), adaptive (a BPDA iteration and 100 HopSkipJump queries per image at B = 128 and 512).
The one-shot run for a lent GPU is ``benchmarks/gpu_issue41.sh``.
"""

import argparse
import collections
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.profile_fit import LARGEST_CONV_FLOPS, forward_flops, images_for  # noqa: E402
from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402
from dipdefense.defenses import build_defense  # noqa: E402
from dipdefense.dip.engine import CUDAGraphStep, DIPFit, DIPSettings, fit_dip  # noqa: E402
from dipdefense.dip.skip_net import SamePadConv  # noqa: E402
from dipdefense.nets import load_classifier  # noqa: E402

SECTIONS = ("syncs", "graph", "invariance", "fit", "stitch", "modes", "agreement", "adaptive")
ZERO_PAD = {"pad": "zero"}  # the CIFAR network as dip_stitch runs it by default


def tf32_on_then_off(device: str) -> Iterator[bool]:
    """cuDNN's TF32 on (PyTorch's default), then off, then back to the default."""
    for tf32 in (True, False):
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = tf32
        yield tf32
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = True


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (cuDNN picks its kernels on the first call of a shape)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def sync_count(images: torch.Tensor, victim: torch.nn.Module, device: str, iterations: int) -> dict:
    """Synchronizing calls during one dip_stitch forward, by source line (CUDA only)."""
    if device != "cuda":
        return {"device": device, "counted": False}
    defense = build_defense("dip_stitch", iterations=iterations).to(device)
    x = images.to(device)
    indices = torch.arange(len(x))
    defense.purify(x, victim, indices)  # warm-up outside the count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            defense.purify(x, victim, indices)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    by_line: collections.Counter = collections.Counter()
    for w in caught:
        if "synchroniz" in str(w.message):
            by_line[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return {
        "device": device,
        "counted": True,
        "images": len(x),
        "iterations": iterations,
        "syncs": sum(by_line.values()),
        "by_line": dict(by_line.most_common(15)),
    }


def batch_invariance(images: torch.Tensor, device: str, steps: int) -> dict:
    """Image 0 fitted alone and as the first of a batch: max |difference| of x(steps)."""
    settings = DIPSettings(iterations=steps, network=ZERO_PAD)
    alone = fit_dip(images[:1].to(device), [0], settings)
    batched = fit_dip(images.to(device), list(range(len(images))), settings)[:1]
    return {"batch": len(images), "steps": steps, "max_abs_diff": float((alone - batched).abs().max())}


def fit_rate(batch: int, images: torch.Tensor, device: str, steps: int) -> dict:
    fit = DIPFit(images[:batch].to(device), list(range(batch)), DIPSettings(network=ZERO_PAD))
    flops = 3 * forward_flops(fit)
    seconds = timed(fit.step, device, steps)
    conv = SamePadConv(35, 32, 3, pad="zero", groups=batch).to(device)
    x = torch.randn(1, 35 * batch, 32, 32, device=device, requires_grad=True)

    def conv_step() -> None:
        conv(x).sum().backward()

    conv_seconds = timed(conv_step, device, steps)
    fit_gflops = flops / seconds / 1e9
    conv_gflops = LARGEST_CONV_FLOPS * batch / conv_seconds / 1e9
    return {
        "batch": batch,
        "ms_per_step": 1e3 * seconds,
        "image_iterations_per_s": batch / seconds,
        "fit_gflops": fit_gflops,
        "largest_conv_gflops": conv_gflops,
        "ratio": fit_gflops / conv_gflops,
    }


def graph_rate(batch: int, images: torch.Tensor, device: str, steps: int) -> dict:
    """Fit steps eager and replayed from one CUDA graph, and how far 200 steps of each drift apart."""
    x, seeds = images[:batch].to(device), list(range(batch))
    eager_fit = DIPFit(x, seeds, DIPSettings(network=ZERO_PAD))
    graphed_step = CUDAGraphStep(DIPFit(x, seeds, DIPSettings(network=ZERO_PAD, cuda_graph=True)))
    for _ in range(CUDAGraphStep.warmup + 1):
        graphed_step()  # warm-up, then record
    eager_s = timed(eager_fit.step, device, steps)
    graph_s = timed(graphed_step, device, steps)
    drift = fit_dip(x, seeds, DIPSettings(network=ZERO_PAD, iterations=200, cuda_graph=True)) - fit_dip(
        x, seeds, DIPSettings(network=ZERO_PAD, iterations=200)
    )
    return {
        "batch": batch,
        "eager_ms_per_step": 1e3 * eager_s,
        "graph_ms_per_step": 1e3 * graph_s,
        "speedup": eager_s / graph_s,
        "max_abs_diff_after_200_steps": float(drift.abs().max()),
    }


def stitch_rate(
    batch: int,
    images: torch.Tensor,
    victim: torch.nn.Module,
    device: str,
    iterations: int,
    cuda_graph: bool = False,
    **modes: bool,
) -> dict:
    """Full dip_stitch on ``batch`` images; ``timed`` runs it once untimed first (cuDNN's kernel
    choice, and the compile of ``compile=True``), then once timed."""
    options = {"cuda_graph": cuda_graph, **modes}
    defense = build_defense("dip_stitch", iterations=iterations, dip_batch=batch, **options).to(device)
    x = images[:batch].to(device)
    indices = torch.arange(len(x))
    seconds = timed(lambda: defense.purify(x, victim, indices), device, 1)
    return {**options, "batch": batch, "iterations": iterations, "seconds": seconds, "images_per_s": batch / seconds}


def conv_forms(batch: int, device: str, steps: int) -> list[dict]:
    """Issue 41, item 3: the fit's largest layer (grouped 3x3, 35 -> 32 channels at 32x32, one
    group per network), forward + backward, written four ways: cuDNN's grouped convolution
    (channels-first and channels-last), im2col + batched GEMM, and torch.func.vmap of one
    network's convolution over the B networks."""
    import torch.nn.functional as F

    from dipdefense.dip.skip_net import grouped_conv_op

    weight = torch.randn(32 * batch, 35, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(32 * batch, device=device, requires_grad=True)
    x = torch.randn(1, 35 * batch, 34, 34, device=device, requires_grad=True)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def per_network(w: torch.Tensor, b: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return F.conv2d(xi.unsqueeze(0), w, b).squeeze(0)

    vmapped = torch.func.vmap(per_network)
    forms = {
        "grouped conv": lambda: F.conv2d(x, weight, bias, groups=batch),
        "grouped conv, channels-last": lambda: F.conv2d(x_last, weight, bias, groups=batch),
        "im2col + batched GEMM (chunked)": lambda: grouped_conv_op(x, weight, bias, batch, 1),
        "vmap over networks": lambda: vmapped(
            weight.view(batch, 32, 35, 3, 3), bias.view(batch, 32), x.view(batch, 35, 34, 34)
        ),
    }
    rows = []
    for name, form in forms.items():
        seconds = timed(lambda form=form: form().sum().backward(), device, steps)
        rows.append({"form": name, "batch": batch, "ms": 1e3 * seconds,
                     "gflops": LARGEST_CONV_FLOPS * batch / seconds / 1e9})  # fmt: skip
    return rows


def run_with_limit(command: list[str], limit_s: int) -> dict:
    """A child command with its own time limit; its last lines kept for the report."""
    import subprocess

    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
        status, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status, text = (
            "timed out",
            (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""),
        )
    return {"command": " ".join(command), "status": status, "seconds": time.perf_counter() - start,
            "tail": text[-3000:]}  # fmt: skip


def agreement(device: str, num_samples: int, out_root: Path, limit_s: int) -> list[dict]:
    """Issue 41, item 4: dip_stitch in the fast mode against the exact mode on the README's test
    images, clean and PGD-8 (oblivious), paired image by image (evaluation.compare --paired)."""
    results = []
    runs = {"exact": "dip_stitch", "fast": "dip_stitch(fast=true)"}
    for name, defense in runs.items():
        command = [sys.executable, "evaluate.py", "--defense", defense, "--attacks", "clean,pgd", "--num-samples",
                   str(num_samples), "--accelerator", "gpu" if device == "cuda" else "cpu", "--out",
                   str(out_root / name)]  # fmt: skip
        results.append({"run": name, **run_with_limit(command, limit_s)})
    compare = [sys.executable, "-m", "dipdefense.evaluation.compare", *(str(out_root / n) for n in runs), "--paired"]
    results.append({"run": "paired", **run_with_limit(compare, 120)})
    return results


def adaptive(device: str, batches: list[int], limit_s: int) -> list[dict]:
    """Issue 41, item 5: one BPDA iteration and 100 HopSkipJump queries per image at GPU batch sizes."""
    sizes = ",".join(str(b) for b in batches)
    command = [sys.executable, "benchmarks/adaptive_cost.py", "--defense", "dip_stitch", "--device", device,
               "--batch-sizes", sizes, "--out", str(REPO / "benchmarks" / f"adaptive_cost_{device}.json")]  # fmt: skip
    return [run_with_limit(command, limit_s)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", default="1,8,32,128,512")
    p.add_argument("--stitch-batch-sizes", default="32,128,512")
    p.add_argument("--steps", type=int, default=50, help="timed fit steps per configuration")
    p.add_argument("--iterations", type=int, default=1000, help="T of the dip_stitch runs")
    p.add_argument("--data-dir", default=os.environ.get("DIPDEF_CIFAR10"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "gpu_checks.json"))
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}, in that order")
    p.add_argument("--mode-batch-sizes", default="128,512", help="B of the modes section (each compiles per B)")
    p.add_argument("--agreement-samples", type=int, default=200, help="test images of the agreement section")
    p.add_argument("--section-limit", type=int, default=240, help="seconds for each child run of a section")
    args = p.parse_args()
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; accepted: {', '.join(SECTIONS)}")
    device = args.device
    batches = [int(b) for b in args.batch_sizes.split(",")]
    stitch_batches = [int(b) for b in args.stitch_batch_sizes.split(",")]
    images = images_for(max(batches + stitch_batches), args.data_dir)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    report: dict = {"machine": name, "torch": torch.__version__, "device": device}
    victim = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt", map_location=device)

    def save() -> None:  # after every section: a run stopped at its time limit keeps what it measured
        atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
        last = report[list(report)[-1]]
        print(json.dumps(last[-1] if isinstance(last, list) else last), flush=True)

    if "syncs" in sections:
        report["syncs"] = sync_count(images[:8], victim, device, args.iterations)
        save()
    if "graph" in sections and device == "cuda":
        report["graph"] = []
        for batch in batches:
            report["graph"].append(graph_rate(batch, images, device, args.steps))
            save()
        for batch in stitch_batches:
            for cuda_graph in (False, True):
                report["graph"].append(stitch_rate(batch, images, victim, device, args.iterations, cuda_graph))
                save()
    if "invariance" in sections:
        report["batch_invariance"] = []
        for tf32 in tf32_on_then_off(device):
            report["batch_invariance"].append({"tf32": tf32, **batch_invariance(images[:8], device, 200)})
        save()
    if "fit" in sections:
        report["fit"] = []
        for tf32 in tf32_on_then_off(device):
            for batch in batches:
                report["fit"].append({"tf32": tf32, **fit_rate(batch, images, device, args.steps)})
                save()
    if "stitch" in sections:
        report["stitch"] = []
        for batch in stitch_batches:
            report["stitch"].append(stitch_rate(batch, images, victim, device, args.iterations))
            save()
    if "modes" in sections:  # issue 41: eager, fast, compile, compile+fast; fit steps, then full dip_stitch
        from benchmarks.compile_speed import fit_rows

        mode_batches = [int(b) for b in args.mode_batch_sizes.split(",")]
        report["conv_forms"] = [row for b in mode_batches for row in conv_forms(b, device, args.steps)]
        save()
        report["modes"] = fit_rows(mode_batches, 3, ["eager", "fast", "compile", "compile+fast"], device, args.data_dir)
        save()
        for batch in mode_batches:
            for modes in ({}, {"fast": True}, {"compile": True}, {"compile": True, "fast": True}):
                report["modes"].append(stitch_rate(batch, images, victim, device, args.iterations, **modes))
                save()
    if "agreement" in sections:
        report["agreement"] = agreement(device, args.agreement_samples, Path(args.out).parent / "agreement",
                                        args.section_limit)  # fmt: skip
        save()
    if "adaptive" in sections:
        # B = 512 would cost about four times B = 128's minute or so; run it apart when time allows
        report["adaptive"] = adaptive(device, [128] if device == "cuda" else [1], args.section_limit)
        save()


if __name__ == "__main__":
    main()
