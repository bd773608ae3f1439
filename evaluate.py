"""Attack, defend, measure, report: ``python evaluate.py --defense none``; ``--help`` lists the options.

The code is in :mod:`lightning_modules.evaluate_cli` (installed as the ``dipdef-evaluate`` command); this file
is the checkout's entry point and re-exports it, so ``import evaluate`` works from the
repository root, in a notebook too.
"""

from dipdefense.common.errors import run_main
from dipdefense.evaluation.options import DEFAULTS, deep_merge, load_options  # noqa: F401
from lightning_modules.evaluate_cli import main, run, write_report  # noqa: F401
from lightning_modules.evaluation_parts import build  # noqa: F401

if __name__ == "__main__":
    run_main(main)
