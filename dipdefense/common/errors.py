"""Errors that mean "the user's input is wrong", as opposed to a bug.

Entry points (train.py, evaluate.py) catch :class:`UserError` and print its message on
one line instead of a traceback, so every message must say what was wrong and what is
accepted.
"""

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: a config value, a path, a checkpoint, a name."""


class DataNotFoundError(UserError):
    """A data directory is missing or is not in any layout the loader accepts."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, unsafe to load or of the wrong kind."""


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a :class:`UserError` becomes ``error: ...`` on stderr and exit 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
