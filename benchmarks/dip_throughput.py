"""Throughput and peak memory of the full dip_stitch defense (DIP fit + victim mapping +
stitching), batched engine vs the one-image-at-a-time loop, measured side by side.

    python benchmarks/dip_throughput.py --batch-sizes 1,8,32,128 --iterations 1000

Each configuration runs in its own subprocess so that its peak memory (CUDA: the
allocator's peak; CPU: the process's peak RSS) is its own. Images are real CIFAR-10 test
images when ``$DIPDEF_CIFAR10`` (or ``--data-dir``) points at a copy, random otherwise.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.common.atomic_files import atomic_write_text  # noqa: E402


def measure(batch: int, images: int, iterations: int, device: str, data_dir: str | None) -> dict:
    import torch

    from dipdefense.defenses.dip_stitch import DIPStitch
    from dipdefense.nets import load_classifier

    classifier = load_classifier(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt", map_location=device)
    if data_dir:
        from datamodules import CIFAR10DataModule

        test = CIFAR10DataModule(data_dir=data_dir).load_split(train=False)
        x = test.images[:images].float().div(255).to(device)
    else:
        x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    defense = DIPStitch(iterations=iterations, observe_every=max(1, iterations // 200), dip_batch=batch)
    indices = torch.arange(images)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    defense.purify(x, classifier, indices)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "batch": batch,
        "images": images,
        "iterations": iterations,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_mb": peak / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-sizes", default="1,8,32,128")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--loop-images", type=int, default=4, help="images for the one-at-a-time loop (B=1)")
    p.add_argument("--device", default="cuda" if "--cuda" in sys.argv else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "dip_throughput.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        batch, images = map(int, args.one.split(":"))
        print(json.dumps(measure(batch, images, args.iterations, args.device, args.data_dir)))
        return
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        images = args.loop_images if batch == 1 else batch
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"{batch}:{images}",
            "--iterations",
            str(args.iterations),
            "--device",
            args.device,
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        result = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        rows.append(result)
        print(json.dumps(result), flush=True)
    loop = next(r for r in rows if r["batch"] == 1)
    for r in rows:
        r["speedup_vs_loop"] = r["images_per_s"] / loop["images_per_s"]
    machine = platform.processor() or platform.machine()
    if args.device == "cuda":
        import torch

        machine = torch.cuda.get_device_name()
    atomic_write_text(
        Path(args.out), json.dumps({"machine": machine, "device": args.device, "rows": rows}, indent=2) + "\n"
    )
    print(f"{'B':>5}{'images':>8}{'s':>9}{'img/s':>9}{'x loop':>8}{'peak MB':>9}")
    for r in rows:
        print(
            f"{r['batch']:>5}{r['images']:>8}{r['seconds']:>9.1f}{r['images_per_s']:>9.3f}{r['speedup_vs_loop']:>8.2f}{r['peak_mb']:>9.0f}"
        )


if __name__ == "__main__":
    main()
