"""Attack, defend, measure, report: ``python evaluate.py --defense none``; ``--help`` lists the options.

The code is in :mod:`evaluation.cli` (installed as the ``dipdef-evaluate`` command); this file
is the checkout's entry point and re-exports it, so ``import evaluate`` works from the
repository root, in a notebook too.
"""

from dipdefense.common.errors import run_main
from dipdefense.evaluation.cli import DEFAULTS, build, deep_merge, load_options, main, run, write_report  # noqa: F401

if __name__ == "__main__":
    run_main(main)
