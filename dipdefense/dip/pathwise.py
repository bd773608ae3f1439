"""The pathwise gradient of a DIP defense's output with respect to its input x0.

x0 enters the fit at every step: it is the target of the MSE loss (paper 002, Algorithm 1,
line 5; papers 001 and 004 fit the same way), so theta_{t+1} = Adam(theta_t, grad_theta
MSE(f(z; theta_t), x0)) depends on x0, and so does every iterate x(t) = f(z; theta_t). With the
rule's discrete choices held fixed (``dip.selection``), y = clamp(sum_t w_t x(t) + c x0, 0, 1)
and dy/dx0 is the sum over t of w_t dx(t)/dx0 plus c: reverse-mode differentiation through the
unrolled fit, the gradient of each Adam step taken through the gradient of the loss (a second
derivative of the network, as in unrolled meta-learning: Maclaurin et al. 2015, "Gradient-based
Hyperparameter Optimization through Reversible Learning").

Memory is bounded by checkpointing (Griewank & Walther, "Algorithm 799: revolve"): the forward
fit keeps (theta, Adam's m and v) every ``segment`` steps (``StateRecorder``); the backward pass
recomputes one segment at a time with its graph, from the last segment to the first, and carries
the adjoint of (theta, m, v) across segment boundaries. Recomputation repeats the forward fit
bit for bit (on a CPU with ``exact_cpu``; tests/test_pathwise.py), because Adam is written here
with the same operations ``torch.optim.Adam`` runs (its single-tensor path), and a DIP fit is
chaotic enough that any other rounding would differentiate a different trajectory.

What it is worth: the fit is shattered (DESIGN.md, "Threat models"): Adam's update g / (sqrt(v) +
eps) has slope lr / eps around g = 0, so this exact gradient describes the defense only at
scales far below a perturbation's. It is exact, and a tool for measuring that, and for use inside
smoothed estimators; it is not expected to be a good attack direction on its own.
"""

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dipdefense.dip.engine import DIPFit, DIPSettings, split_flat
from dipdefense.dip.selection import LinearSelection
from dipdefense.dip.skip_net import SamePadConv

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which DIPFit uses


@dataclass
class FitState:
    """theta_t (the flat buffer), Adam's m and v before the update of step t (t updates done)."""

    theta: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


class StateRecorder:
    """Given to ``fit_dip``: keeps the fit's state every ``segment`` iterations, and the fit."""

    def __init__(self, segment: int) -> None:
        if segment < 1:
            raise ValueError(f"segment must be >= 1 (fit steps recomputed at once), got {segment}")
        self.segment = segment
        self.states: dict[int, FitState] = {}
        self.fit: DIPFit | None = None

    def __call__(self, t: int, fit: DIPFit) -> None:
        """Called before the update of iteration t."""
        self.fit = fit
        if t % self.segment:
            return
        state = fit.optimizer.state.get(fit.flat, {})
        zeros = torch.zeros_like(fit.flat.detach())
        self.states[t] = FitState(
            fit.flat.detach().clone(),
            state["exp_avg"].clone() if state else zeros,
            state["exp_avg_sq"].clone() if state else zeros.clone(),
        )

    def nbytes(self) -> int:
        return sum(3 * s.theta.numel() * s.theta.element_size() for s in self.states.values())


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero derivative at 0: the same values, no 0 * inf where a gradient is exactly 0."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def adam_update(
    theta: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    step: int,
    lr: float,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1), out of place and differentiable, with the
    operations and rounding of torch.optim.Adam's single-tensor path (torch 2.x)."""
    beta1, beta2 = ADAM_BETAS
    exp_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = (exp_avg_sq * beta2).addcmul(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2_sqrt = (1 - beta2 ** float(step)) ** 0.5
    denom = (_safe_sqrt(exp_avg_sq) / bias_correction2_sqrt) + eps
    return theta.addcdiv(exp_avg, denom, value=-(lr / bias_correction1)), exp_avg, exp_avg_sq


@contextlib.contextmanager
def native_convolutions() -> Iterator[None]:
    """PyTorch's own grouped convolutions, which have second derivatives: the batched-GEMM
    ones of ``dip.skip_net`` do not, and run only where they equal these bit for bit."""
    previous, SamePadConv.batched_gemm = SamePadConv.batched_gemm, False
    try:
        yield
    finally:
        SamePadConv.batched_gemm = previous


class UnrolledFit:
    """Algorithm 1's lines 4-7 as a function of (theta, m, v, x0): the network of a ``DIPFit``
    evaluated at a flat parameter vector theta, with ``torch.func.functional_call``."""

    def __init__(self, fit: DIPFit, settings: DIPSettings) -> None:
        if settings.input_jitter or settings.output_ema:
            raise ValueError(
                "the pathwise gradient unrolls the plain fit; input_jitter and output_ema are not supported "
                f"(input_jitter={settings.input_jitter}, output_ema={settings.output_ema})"
            )
        if fit.graphed:
            raise ValueError(
                "the pathwise gradient recomputes the fit with the eager Adam; a cuda_graph fit rounds differently "
                "(capturable Adam): run the defense with cuda_graph=false"
            )
        self.fit, self.lr, self.eps = fit, settings.lr, settings.adam_eps
        self.noise_shape = fit.noise.shape if settings.optimize_input else None

    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        """The fit's own numerics (``DIPFit.numerics``), with convolutions that differentiate twice."""
        with self.fit.numerics(), native_convolutions():
            yield

    def output(self, theta: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x(t) = f(z; theta) as [1, B*C, H, W], and the parameter views it was computed from."""
        params, z = split_flat(theta, self.fit.param_names, self.fit.param_shapes, self.noise_shape)
        views = list(params.values()) + ([z] if z is not None else [])
        return torch.func.functional_call(self.fit.net, params, (self.fit.noise if z is None else z,)), views

    def loss(self, out: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The summed per-image MSE of ``DIPFit`` (each network's gradient is its own image's)."""
        b = self.fit.shape[0]
        return (out - x0.reshape(out.shape)).pow(2).reshape(b, -1).mean(1).sum()

    def step(
        self, theta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, t: int, create_graph: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """x(t) and (theta, m, v) after the update of iteration t (Adam's step count t + 1)."""
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_(True)
        out, views = self.output(theta)
        grads = torch.autograd.grad(self.loss(out, x0), views, create_graph=create_graph)
        grad = torch.cat([g.reshape(-1) for g in grads])
        if not create_graph:
            out, theta = out.detach(), theta.detach()
        return out, adam_update(theta, m, v, grad, t + 1, self.lr, self.eps)


def unrolled_forward(
    unrolled: UnrolledFit, start: FitState, x0: torch.Tensor, selection: LinearSelection, segment: int
) -> tuple[torch.Tensor, dict[int, FitState]]:
    """y = clamp(sum_t w_t x(t) + c x0, 0, 1) by the functional fit from ``start`` (theta_0), with
    the states ``pathwise_vjp`` needs: the same function the defense computes, in any dtype
    (float64 for finite-difference checks)."""
    states, total, wanted = {}, None, selection.times()
    theta, m, v = start.theta, start.exp_avg, start.exp_avg_sq
    with unrolled.numerics():
        for t in range(selection.last + 1):
            if t % segment == 0:
                states[t] = FitState(theta.detach(), m.detach(), v.detach())
            if t == selection.last:
                out = unrolled.output(theta.detach())[0].detach()
            else:
                out, (theta, m, v) = unrolled.step(theta, m, v, x0, t, create_graph=False)
            if t in wanted:
                w = selection.weight_at(t, x0.device, x0.dtype).view(-1, 1, 1, 1)
                term = w * out.reshape(x0.shape)
                total = term if total is None else total + term
    c = torch.tensor(selection.x0_weight, device=x0.device, dtype=x0.dtype).view(-1, 1, 1, 1)
    return (total + c * x0).clamp(0, 1), states


def pathwise_vjp(
    unrolled: UnrolledFit,
    states: dict[int, FitState],
    segment: int,
    selection: LinearSelection,
    x0: torch.Tensor,
    output: torch.Tensor,
    grad_output: torch.Tensor,
) -> torch.Tensor:
    """d<grad_output, y>/dx0 for y = clamp(sum_t w_t x(t) + c x0, 0, 1), through the unrolled fit.

    ``output`` is y as the defense returned it (its clamp decides where the gradient passes);
    ``states`` are the checkpoints a ``StateRecorder`` kept every ``segment`` iterations."""
    b = len(x0)
    device, dtype = x0.device, states[0].theta.dtype
    passed = grad_output * ((output > 0) & (output < 1)).to(grad_output.dtype)  # clamp's derivative
    c = torch.tensor(selection.x0_weight, device=device, dtype=dtype).view(-1, 1, 1, 1)
    grad_x0 = (c * passed).to(dtype)
    last = selection.last
    wanted = sorted(selection.times())
    # every weight copied to the device at once, before the loop: no host sync inside it
    stacked = torch.tensor([[w.get(t, 0.0) for w in selection.weights] for t in wanted], dtype=dtype).to(device)
    weights = dict(zip(wanted, stacked.view(len(wanted), -1, 1, 1, 1), strict=True))
    adjoint: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    with unrolled.numerics():
        for start in reversed(range(0, last + 1, segment)):
            end = min(start + segment, last + 1)  # iterates start .. end - 1 are recomputed
            state = states[start]
            leaves = [
                s.detach().clone().requires_grad_(start > 0) for s in (state.theta, state.exp_avg, state.exp_avg_sq)
            ]
            target = x0.detach().to(dtype).requires_grad_(True)
            theta, m, v = leaves
            outputs, adjoints = [], []
            for t in range(start, end):
                if t == last:  # the last iterate read: no update after it
                    out, _ = unrolled.output(theta)
                else:
                    out, (theta, m, v) = unrolled.step(theta, m, v, target, t, create_graph=True)
                if t in weights:
                    outputs.append(out)
                    adjoints.append((weights[t] * passed).reshape(out.shape).to(dtype))
            if adjoint is not None:
                outputs += [theta, m, v]
                adjoints += list(adjoint)
            inputs = [target, *leaves] if start > 0 else [target]
            grads = torch.autograd.grad(outputs, inputs, adjoints, allow_unused=True)
            grad_x0 = grad_x0 + (grads[0] if grads[0] is not None else 0)
            if start > 0:
                adjoint = tuple(
                    g if g is not None else torch.zeros_like(s) for g, s in zip(grads[1:], leaves, strict=True)
                )
    return grad_x0.reshape(b, *x0.shape[1:]).to(grad_output.dtype)


def probe_step_bytes(unrolled: UnrolledFit, state: FitState, x0: torch.Tensor) -> int:
    """Bytes autograd keeps for one recomputed step (forward, gradient with its graph, Adam):
    counted from the tensors the graph saves, on the real network, batch and device."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with unrolled.numerics(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        theta = state.theta.detach().clone().requires_grad_(True)
        unrolled.step(theta, state.exp_avg, state.exp_avg_sq, x0.detach().requires_grad_(True), 0, True)
    return sum(saved.values())


def available_bytes(device: torch.device) -> int:
    """Memory the backward pass may use: 90% of the GPU's free memory, or 80% of the
    system's available memory (Linux's MemAvailable) on a CPU."""
    if device.type == "cuda":
        return int(0.9 * torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(0.8 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_needed(step_bytes: int, state_bytes: int, iterations: int, segment: int) -> int:
    """One segment's graph (and one step's slack for the backward) plus the kept states."""
    return (segment + 1) * step_bytes + math.ceil(iterations / segment) * state_bytes


def check_memory(
    defense: str, batch: int, step_bytes: int, state_bytes: int, iterations: int, segment: int, budget: int
) -> None:
    """Refuse, before the fit starts, an exact gradient that would not fit in ``budget`` bytes,
    naming a segment length (or a smaller batch) that would."""
    need = memory_needed(step_bytes, state_bytes, iterations, segment)
    if need <= budget:
        return
    gb = 1 / 2**30
    best = max(1, round(math.sqrt(iterations * state_bytes / max(step_bytes, 1))))
    fitting = [s for s in range(1, iterations + 1) if memory_needed(step_bytes, state_bytes, iterations, s) <= budget]
    if fitting:
        closest = min(fitting, key=lambda s: abs(s - segment))
        advice = f"exact_segment={closest} would need {memory_needed(step_bytes, state_bytes, iterations, closest) * gb:.1f} GB"
    else:
        advice = (
            f"no segment length fits {batch} images (the least, exact_segment={best}, needs "
            f"{memory_needed(step_bytes, state_bytes, iterations, best) * gb:.1f} GB): lower dip_batch"
        )
    raise MemoryError(
        f"the exact gradient of {defense} on {batch} images needs about {need * gb:.1f} GB with "
        f"exact_segment={segment} ({iterations} iterations unrolled), and {budget * gb:.1f} GB is available; {advice}"
    )
