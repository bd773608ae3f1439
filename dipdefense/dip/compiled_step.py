"""The DIP fit step under ``torch.compile`` (``DIPSettings.compile``).

Two compiled regions per step: the network's forward and the per-image MSE (Algorithm 1's
lines 4-5 of paper 002), whose backward AOTAutograd traces and compiles with it, and Adam's
update of the flat parameter buffer (lines 6-7). The network runs through
``torch.func.functional_call`` on slices of that buffer, so the backward writes one gradient
for the whole buffer with no per-tensor concatenation, and the compiled code takes the
parameters as inputs rather than as constants of one batch's module.

Compiling costs a minute or more on a CPU, so a compiled step is kept per process and
reused by every later fit of the same network, batch shape, device and settings
(``compiled_steps``): a long evaluation pays once per chunk shape, not once per chunk. A copy
of the first fit's network is kept as the template that ``functional_call`` runs; every fit
passes its own parameters and BatchNorm buffers.

A compiled step is not bit-equal to the eager one: the compiler fuses element-wise work and
reorders its arithmetic (a last-bit difference at the first step, which the fit's chaos grows;
benchmarks/RESULTS.md). So it is recorded in a run's parameters, like ``fast``.
"""

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

from dipdefense.dip.engine import split_flat

if TYPE_CHECKING:
    from dipdefense.dip.engine import DIPFit

# key -> (compiled forward-and-loss, compiled Adam); see CompiledStep.key
compiled_steps: dict[tuple, tuple[Callable, Callable]] = {}


def adam_update(
    flat: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    lr: float,
    eps: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
) -> None:
    """One Adam step in place (Kingma & Ba 2015, Algorithm 1; torch.optim.Adam's defaults and
    arithmetic order); ``step`` is a 0-d tensor so that the compiled code does not change with it."""
    step += 1
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denominator = (exp_avg_sq.sqrt() / bias_correction2.sqrt()).add_(eps)
    flat.sub_(exp_avg / denominator * (lr / bias_correction1))


class CompiledStep:
    """``DIPFit.step`` with the forward-and-loss and Adam compiled (``DIPSettings.compile``).

    Called like ``DIPFit.step``: returns x(t) [1, B*C, H, W] and its per-image MSE [B], detached,
    and leaves theta_{t+1} in the fit's flat buffer. ``forward()`` is the compiled forward alone
    (the last iterate, which is not followed by an update)."""

    def __init__(self, fit: "DIPFit") -> None:
        self.fit = fit
        self.buffers = dict(fit.net.named_buffers())
        self.exp_avg = torch.zeros_like(fit.flat.detach())
        self.exp_avg_sq = torch.zeros_like(fit.flat.detach())
        self.step_count = torch.zeros((), dtype=fit.flat.dtype, device=fit.flat.device)
        key = self.key(fit)
        if key not in compiled_steps:
            compiled_steps[key] = (torch.compile(self._forward_and_loss_for(fit)), torch.compile(adam_update))
        self.forward_and_loss, self.adam = compiled_steps[key]

    @staticmethod
    def key(fit: "DIPFit") -> tuple:
        s = fit.settings
        return (
            repr(sorted(s.network.items())), fit.shape, str(fit.flat.device), fit.flat.dtype, s.optimize_input,
            s.fast, fit.exact, fit.channels_last,
        )  # fmt: skip

    def _forward_and_loss_for(self, template_fit: "DIPFit") -> Callable:
        # A copy, so that no fit's own tensors are the template's: the compiled code then guards
        # on their shapes, not on which fit's tensors they are (which would recompile per fit).
        template = copy.deepcopy(template_fit.net)
        names, shapes, b = template_fit.param_names, template_fit.param_shapes, template_fit.shape[0]
        noise_shape = template_fit.noise.shape if template_fit.settings.optimize_input else None

        def forward_and_loss(
            flat: torch.Tensor, noise: torch.Tensor, jitter: torch.Tensor | None, buffers: dict, target: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            params, z = split_flat(flat, names, shapes, noise_shape)
            z = noise if z is None else z
            if jitter is not None:
                z = z + jitter
            out = functional_call(template, {**params, **buffers}, (z,))
            return out, (out - target).pow(2).reshape(b, -1).mean(1)

        return forward_and_loss

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        fit = self.fit
        jitter = fit.jitter_draw()
        with fit.numerics():
            return self.forward_and_loss(fit.flat, fit.noise.detach(), jitter, self.buffers, fit.target)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        fit = self.fit
        out, per_image = self.forward()
        with fit.numerics():
            (grad,) = torch.autograd.grad(per_image.sum(), [fit.flat])
        with torch.no_grad():
            self.adam(
                fit.flat, grad, self.exp_avg, self.exp_avg_sq, self.step_count, fit.settings.lr, fit.settings.adam_eps
            )
        return out.detach(), per_image.detach()
