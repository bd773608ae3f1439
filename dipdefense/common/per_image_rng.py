"""Per-image random draws for attacks, so an image's adversarial example does not depend on the
batch (chunk) it is attacked in, nor on the process or rank that attacks it.

Library attacks draw their random starts from torch's global generator over the whole batch:
row i of ``torch.empty_like(x).uniform_(-eps, eps)`` is the generator's i-th slice, so the
same image gets another start in another batch. Inside ``per_image_draws(seeds)`` every such
draw whose first dimension is the batch is instead made row by row, row i from its own CPU
generator seeded with ``seeds[i]`` (then moved to the tensor's device, so CPU and GPU agree).
A draw of another shape (an attack that works on a subset of the batch, such as Square or
HopSkipJump) falls back to the global generator, which the caller seeds per chunk, and is
counted in ``shared_draws``: an attack with shared draws is reproducible for a given chunking,
not per image. An attack that knows which rows its subset is says so with ``restricted_rows``,
and its draws stay per image (APGD's restarts on the images still right).

Calls that pass their own ``generator=`` are left alone, and ``global_draws()`` suspends the
interception where code seeds the global generator itself (the defenses: a DIP network's
initialisation is drawn after ``torch.manual_seed(image seed)``).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from dipdefense.common.seeding import item_seed

# In-place draws: the tensor's own shape decides.
_IN_PLACE = {
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
    torch.Tensor.bernoulli_,
    torch.Tensor.random_,
    torch.Tensor.exponential_,
    torch.Tensor.cauchy_,
    torch.Tensor.log_normal_,
    torch.Tensor.geometric_,
}
_FACTORIES = {torch.rand, torch.randn, torch.randint}
_LIKE = {torch.rand_like: torch.rand, torch.randn_like: torch.randn, torch.randint_like: torch.randint}
# Random ops that are never split (their rows are not images): counted as shared draws.
_OTHER = {
    torch.randperm,
    torch.bernoulli,
    torch.multinomial,
    torch.normal,
    torch.poisson,
    torch.Tensor.bernoulli,
    torch.Tensor.multinomial,
}

_active: list["PerImageDraws"] = []
# An attack's seed for an image is the image's seed shifted by 2^62, so the attack never draws
# the numbers the defense's own generator, seeded with the image's seed, draws.
ATTACK_STREAM = 1 << 62


def attack_seed(seed: int, index: int) -> int:
    """The seed of an attack's draws for dataset image ``index`` under the run's ``seed``."""
    return ATTACK_STREAM + item_seed(seed, index)


class PerImageDraws(TorchFunctionMode):
    """The torch function mode behind ``per_image_draws``; ``shared_draws`` counts the draws it
    could not split per image."""

    def __init__(self, seeds: Sequence[int]) -> None:
        super().__init__()
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.per_image_draws = 0
        self.shared_draws = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if kwargs.get("generator") is not None or not (func in _IN_PLACE or func in _FACTORIES or func in _LIKE):
            if func in _OTHER and kwargs.get("generator") is None:
                self.shared_draws += 1
            return func(*args, **kwargs)
        # Drawn as without the mode first: it gives the shape, dtype and device whatever the call's
        # signature, and it advances the global generator as before, so draws that are not split
        # stay what they were.
        result = func(*args, **kwargs)
        rows = self._rows(func, args, kwargs, result)
        if rows is None:
            self.shared_draws += 1
            return result
        self.per_image_draws += 1
        with torch.no_grad():
            drawn = torch.stack(rows).to(device=result.device, dtype=result.dtype)
            if func in _IN_PLACE:
                args[0].copy_(drawn)
                return args[0]
            return drawn.requires_grad_(bool(kwargs.get("requires_grad", False)))

    def _rows(self, func: Callable, args: tuple, kwargs: dict, result: torch.Tensor) -> list[torch.Tensor] | None:
        """Each image's row drawn from its own generator, or None where the draw is not per image."""
        if not isinstance(result, torch.Tensor) or result.dim() == 0 or result.shape[0] != len(self.seeds):
            return None
        shape, dtype = result.shape[1:], result.dtype
        if func in _IN_PLACE:
            if any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values())):
                return None  # a tensor of parameters (bernoulli_(p)) would need splitting too
            return [getattr(torch.empty(shape, dtype=dtype), func.__name__)(*args[1:], generator=g, **kwargs)
                    for g in self.generators]  # fmt: skip
        factory = _LIKE.get(func, func)
        bounds: tuple = ()
        if factory is torch.randint:
            bounds = _randint_bounds(func, args, kwargs)
            if bounds is None:
                return None
        return [factory(*bounds, shape, generator=g, dtype=dtype) for g in self.generators]


def _randint_bounds(func: Callable, args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """(low, high) of a randint / randint_like call."""
    numbers = [a for a in (args[1:] if func is torch.randint_like else args) if isinstance(a, int)]
    low, high = kwargs.get("low"), kwargs.get("high")
    if high is None:
        if not numbers:
            return None
        high = numbers[-1]
        if low is None and len(numbers) >= 2:
            low = numbers[-2]
    return int(low or 0), int(high)


@contextmanager
def per_image_draws(seeds: Sequence[int]) -> Iterator[PerImageDraws]:
    """Make the batch-shaped random draws inside this block per image (module docstring)."""
    mode = PerImageDraws(seeds)
    with mode:
        _active.append(mode)
        try:
            yield mode
        finally:
            _active.pop()


@contextmanager
def restricted_rows(rows: torch.Tensor) -> Iterator[None]:
    """Within the block, batch-shaped draws are for these rows of the innermost ``per_image_draws``
    (a bool mask or indices), each from that image's own generator, which keeps its state: so an
    attack that queries a subset of its batch (the images still right) draws what the same image
    draws in any other chunk. A no-op where no ``per_image_draws`` is active."""
    mode = _active[-1] if _active else None
    if mode is None:
        yield
        return
    picked = torch.arange(len(mode.generators))[rows.detach().cpu()].tolist()
    kept = mode.seeds, mode.generators
    mode.seeds, mode.generators = [kept[0][i] for i in picked], [kept[1][i] for i in picked]
    try:
        yield
    finally:
        mode.seeds, mode.generators = kept


@contextmanager
def global_draws() -> Iterator[None]:
    """Suspend ``per_image_draws`` (if one is active and innermost) for code that seeds the
    global generator itself; a no-op otherwise."""
    mode = _active[-1] if _active else None
    if mode is None or torch.overrides._get_current_function_mode() is not mode:
        yield
        return
    mode.__exit__(None, None, None)
    try:
        yield
    finally:
        mode.__enter__()
