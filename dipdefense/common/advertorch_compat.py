"""The one place advertorch is imported.

advertorch 0.2.3 does ``from torch.autograd.gradcheck import zero_gradients`` at import
time, and torch removed that function (torch 1.9+). We put a small equivalent back
before importing advertorch. ``import torch.autograd.gradcheck as m`` would bind the
*function* ``torch.autograd.gradcheck`` (the package re-exports it under the module's
name), so the module object is reached through ``sys.modules``.
"""

import sys
from collections.abc import Iterable

import torch
import torch.autograd.gradcheck  # noqa: F401  (loads the module into sys.modules)


def zero_gradients(x: torch.Tensor | Iterable[torch.Tensor]) -> None:
    """Zero ``x.grad`` in place, for a tensor or every tensor in an iterable (torch<1.9 semantics)."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, Iterable):
        for element in x:
            zero_gradients(element)


_gradcheck_module = sys.modules["torch.autograd.gradcheck"]
if not hasattr(_gradcheck_module, "zero_gradients"):
    _gradcheck_module.zero_gradients = zero_gradients

from advertorch.attacks import DDNL2Attack  # noqa: E402
from advertorch.bpda import BPDAWrapper  # noqa: E402

__all__ = ["BPDAWrapper", "DDNL2Attack", "zero_gradients"]
