"""Train anything that has a config: ``python train.py --config victim_cifar.yaml``.

The code is in :mod:`lightning_modules.train_cli` (installed as the ``dipdef-train`` command);
this file is the checkout's entry point and re-exports it.
"""

from dipdefense.common.errors import run_main
from lightning_modules.train_cli import build_cli, load_weights, main  # noqa: F401

if __name__ == "__main__":
    run_main(main)
