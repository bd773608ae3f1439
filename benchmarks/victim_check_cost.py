"""What evaluate.py's victim checks add to a run's start (issue 44): loading the victim, the input
contract (two images through it) and the undefended accuracy of the first chunk (up to 100 images),
per victim spec, median of ``--repeats`` in one process after one warm-up.

    python benchmarks/victim_check_cost.py
    python benchmarks/victim_check_cost.py --victim checkpoints/victim_cifar_fast.ckpt --victim examples/own_victim.py:shipped_resnet20
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipdefense.nets.victims import check_input_contract, load_victim  # noqa: E402


def seconds(action, repeats: int) -> float:
    action()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", action="append", help="a victim spec (repeatable)")
    p.add_argument("--chunk", type=int, default=100, help="first-chunk images (evaluate.py caps it at 100)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    specs = args.victim or ["checkpoints/victim_cifar_resnet20.ckpt"]
    images = torch.rand(args.chunk, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| victim | load (s) | input contract (s) | first-chunk accuracy, {args.chunk} images (s) |")
    print("| --- | --- | --- | --- |")
    for spec in specs:
        load = seconds(lambda spec=spec: load_victim(spec), args.repeats)
        model = load_victim(spec)
        contract = seconds(lambda m=model, s=spec: check_input_contract(m, (3, 32, 32), 10, s), args.repeats)

        def accuracy(model=model) -> None:
            with torch.no_grad():
                model(images).argmax(1)

        print(f"| {spec} | {load:.3f} | {contract:.4f} | {seconds(accuracy, args.repeats):.3f} |")


if __name__ == "__main__":
    main()
