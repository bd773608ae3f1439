"""Progress inside a long computation (a DIP fit's iterations), for whoever listens: the
evaluation's bar moves per block of fit iterations instead of once per chunk.

A context variable rather than an argument threaded through every defense and attack: the fit
reports where it is, and nothing between the evaluation loop and the fit needs to know."""

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

FitListener = Callable[[int, int], None]  # (iterations done, iterations in the fit); (0, T) as a fit starts
_listener: ContextVar[FitListener | None] = ContextVar("fit_progress_listener", default=None)


@contextlib.contextmanager
def listening_to_fits(listener: FitListener) -> Iterator[None]:
    """Within this block, every DIP fit reports its progress to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report_fit_progress(done: int, total: int) -> None:
    """Called by the fit: ``done`` of ``total`` iterations run. No-op when nobody listens."""
    listener = _listener.get()
    if listener is not None:
        listener(done, total)
