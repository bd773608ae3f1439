"""The deep-image-prior purifier every DIP defense shares: one batched DIP engine (``dip.engine``)
fitting each image, a selection rule per defense (one file each: dip_stitch.py, dipdefend.py,
deep_protection.py, dip_inc.py), the networks they fit, and the input gradients an attacker can
ask for (BPDA's identity, the pathwise gradient through the fit, the rule-aware backward).
"""

from typing import Any

import torch
from torch import nn

from dipdefense.common.seeding import item_seed
from dipdefense.defenses.base import Purified, Purifier
from dipdefense.dip.engine import DIPFit, DIPSettings, check_image_size, fit_dip
from dipdefense.dip.pathwise import (
    StateRecorder,
    UnrolledFit,
    available_bytes,
    check_memory,
    pathwise_vjp,
    probe_step_bytes,
)
from dipdefense.dip.rule_aware import RuleAwareBackward, rule_aware_coefficients
from dipdefense.dip.selection import rule_selection

DIP_NETWORKS: dict[str, dict[str, Any]] = {
    # Paper 002, App. B.
    "cifar": {
        "channels_down": [32] * 3,
        "channels_up": [32] * 3,
        "channels_skip": [3] * 3,
        "kernel_down": 3,
        "kernel_up": 3,
    },
    "imagenet": {
        "channels_down": [64] * 5,
        "channels_up": [64] * 5,
        "channels_skip": [4] * 5,
        "kernel_down": 3,
        "kernel_up": 3,
    },
    "small": {
        "channels_down": [16] * 2,
        "channels_up": [16] * 2,
        "channels_skip": [4] * 2,
        "kernel_down": 2,
        "kernel_up": 2,
    },
    "large": {
        "channels_down": [48] * 4,
        "channels_up": [48] * 4,
        "channels_skip": [4] * 4,
        "kernel_down": 4,
        "kernel_up": 4,
    },
    # DIPDefend's CIFAR network (Dai et al. 2020): one input channel, no skip connections.
    "dipdefend_cifar": {
        "input_channels": 1,
        "channels_down": [4, 8, 16],
        "channels_up": [4, 8, 16],
        "channels_skip": [0, 0, 0],
    },
    # The official DIP denoising network with Swish (paper 001).
    "deep_protection": {
        "input_channels": 32,
        "channels_down": [128] * 5,
        "channels_up": [128] * 5,
        "channels_skip": [4] * 5,
        "activation": "Swish",
    },
}
DIP_NETWORKS["medium"] = DIP_NETWORKS["cifar"]  # the middle of small/medium/large is paper 002's CIFAR net
# Paper 002's CIFAR net without conv biases: every one but the last feeds a BatchNorm, which
# cancels it, so its true gradient is zero and Adam moves it on round-off (issue 39, item 4).
# The last conv (before the sigmoid) loses its bias too.
DIP_NETWORKS["cifar_nobias"] = {**DIP_NETWORKS["cifar"], "need_bias": False}
# Paper 001's network with 4 scales, for 32x32 images: five halvings leave CIFAR-10 at 1x1,
# where BatchNorm cannot normalise (paper 001 works at 224 px).
DIP_NETWORKS["deep_protection_cifar"] = {
    key: value[:4] if isinstance(value, list) else value for key, value in DIP_NETWORKS["deep_protection"].items()
}
# Paper 001's Swish and 32-channel input on paper 002's CIFAR layout (3 scales of 32 channels):
# a CPU-sized stand-in, 7 s per 1750-iteration fit at B = 8 on 2 cores against deep_protection_cifar's 72 s.
DIP_NETWORKS["deep_protection_small"] = {**DIP_NETWORKS["cifar"], "input_channels": 32, "activation": "Swish"}


# Engine options added after runs were recorded: left out of a run's manifest while off, so
# those runs (whose run.json lacks them) still resume.
OFF_WHEN_ZERO = ("input_jitter", "output_ema")


ENGINE_DEFAULTS = {"adam_eps": 1e-8, "compile": False, "fast": False}  # likewise left out while at their default


PADDINGS = ("reflection", "zero")  # dip.skip_net's; reflection is the default of every network above


class DIPPurifier(Purifier):
    """Shared by the DIP defenses: builds the engine settings, seeds each image's DIP from
    (seed, dataset index), and fits ``dip_batch`` images at a time. Subclasses make the rule.

    Arguments (engine): network (a ``DIP_NETWORKS`` name or ``dip.skip`` arguments),
    iterations, lr (0.01), noise_scale, observe_every, optimize_input (False),
    dip_batch (None: ``cpu_dip_batch``, 32, on a CPU and ``gpu_dip_batch``, 128, on a GPU; speed
    only on a CPU, round-off too on a GPU, where cuDNN is not batch-invariant), seed (0); and,
    for every DIP defense, the fitting options of
    the official DIP code that the papers leave open (``dip.engine.DIPSettings``): init
    ("xavier", or "default" for PyTorch's), input_jitter (0, off; the code's reg_noise_std),
    output_ema (0, off; the code's exp_weight), pad ("reflection", or "zero" as DIPDefend's
    code pads; the network's padding unless a network given as arguments names its own; written
    into the recorded network only when it is "zero", so runs recorded before the option
    existed still resume); cuda_graph (False; on a GPU, replay each fit step as one CUDA
    graph, ``dip.engine.DIPSettings``; speed only, so not in the recorded parameters);
    adam_eps (1e-8, torch's; raised, Adam no longer turns round-off gradients into full steps:
    issue 39's shattering study); compile (False; the fit step through torch.compile) and fast
    (False; oneDNN / bfloat16 numerics), both faster and not bit-equal, so recorded when on.
    """

    observe_tail = 0
    seeded = True
    cpu_dip_batch = 32
    gpu_dip_batch = 128
    # A per-image fit costs seconds on a CPU: the default run (clean + PGD) takes ~5 minutes
    # on 2 cores; the paper-size run passes --num-samples 1000 (or 0 for all).
    default_num_samples = 40
    # Dataset indices whose decision traces are kept (``evaluate.py --save-traces``).
    trace_indices: frozenset[int] = frozenset()
    # The exact (pathwise) gradient: fit steps recomputed at once, and the memory it may use
    # (None: what the device has free, ``dip.pathwise.available_bytes``).
    exact_segment = 25
    exact_memory_bytes: int | None = None

    def __init__(
        self,
        network: str | dict[str, Any],
        iterations: int,
        lr: float,
        noise_scale: float,
        observe_every: int,
        dip_batch: int | None,
        seed: int,
        optimize_input: bool = False,
        *,
        init: str = "xavier",
        input_jitter: float = 0.0,
        output_ema: float = 0.0,
        pad: str = "reflection",
        cuda_graph: bool = False,
        adam_eps: float = 1e-8,
        compile: bool = False,
        fast: bool = False,
    ) -> None:
        if isinstance(network, str) and network not in DIP_NETWORKS:
            raise ValueError(
                f"unknown DIP network {network!r}; accepted: {', '.join(DIP_NETWORKS)} or skip() arguments"
            )
        if pad not in PADDINGS:
            raise ValueError(f"unknown padding {pad!r}; accepted: {', '.join(PADDINGS)}")
        network = dict(DIP_NETWORKS[network] if isinstance(network, str) else network)
        if pad != "reflection":  # a network given as skip() arguments with its own pad keeps it
            network.setdefault("pad", pad)
        self.dip = DIPSettings(
            network=network,
            noise_scale=noise_scale,
            iterations=iterations,
            lr=lr,
            observe_every=observe_every,
            optimize_input=optimize_input,
            init=init,
            input_jitter=input_jitter,
            output_ema=output_ema,
            cuda_graph=cuda_graph,
            adam_eps=adam_eps,
            compile=compile,
            fast=fast,
        )
        self.dip_batch, self.seed = dip_batch, seed

    def rule_settings(self) -> dict[str, Any]:
        return {}

    def device_notes(self, device_type: str) -> list[str]:
        """What the speed options do on this device, said once in the run's log and kept in
        run.json, so that an option that does nothing here is never silently different."""
        notes, d = [], self.dip
        if d.cuda_graph and device_type != "cuda":
            notes.append(
                f"{self.name}: cuda_graph=true has no effect on a {device_type.upper()}; the fit steps run eagerly"
            )
        if d.fast:
            what = (
                "bfloat16 autocast, channels-last, fused Adam"
                if device_type == "cuda"
                else "oneDNN convolutions and channels-last (no bfloat16 on a CPU)"
            )
            notes.append(f"{self.name}: fast=true: {what}; an image's result depends on its batch")
        if d.compile:
            notes.append(
                f"{self.name}: compile=true: each new chunk shape compiles first (a minute or more on a CPU); "
                "results are not bit-equal to the eager fit's"
            )
        return notes

    def dip_batch_on(self, device: torch.device) -> int:
        """Images fitted at once: ``dip_batch``, or when it is None the device's default. A GPU
        step costs about the same from B = 1 to 32 (launch-bound; benchmarks/RESULTS.md, "On a
        GPU"), so a GPU fits 128 at a time, 2.6x the images/s of 32 on an H200."""
        if self.dip_batch is not None:
            return self.dip_batch
        return self.gpu_dip_batch if device.type == "cuda" else self.cpu_dip_batch

    def check_images(self, shape: tuple[int, ...]) -> None:
        check_image_size(self.dip, tuple(shape[-2:]))

    def params(self) -> dict[str, Any]:
        engine = {
            k: v
            for k, v in vars(self.dip).items()
            if k not in ("retain_cpu_memory", "cuda_graph")  # speed only, like dip_batch
            and not (k in OFF_WHEN_ZERO and v == 0)
            and not (k in ENGINE_DEFAULTS and v == ENGINE_DEFAULTS[k])
        }
        return {**engine, **self.rule_settings(), "seed": self.seed}

    def make_rule(self, images: torch.Tensor, classifier: nn.Module, labels: torch.Tensor | None):
        """The observer that selects the output, or None for the last iterate."""
        raise NotImplementedError

    def details(
        self, rule, images: torch.Tensor, classifier: nn.Module, labels: torch.Tensor | None
    ) -> list[dict[str, Any]]:
        return [{} for _ in images]

    def purify_detailed(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> Purified:
        out, details, traces = [], [], {}
        batch = self.dip_batch_on(images.device)
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            x, y = images[part], None if labels is None else labels[part]
            wanted = [j for j, i in enumerate(indices[part].tolist()) if i in self.trace_indices]
            purified, rule = self._fit_chunk(x, y, classifier, indices[part], trace=bool(wanted))
            out.append(purified)
            details += self.details(rule, out[-1], classifier, y)
            if wanted and hasattr(rule, "diagnostics"):
                traces |= {int(indices[part][j]): rule.diagnostics(j) for j in wanted}
        return Purified(torch.cat(out), details, traces)

    def _fit_chunk(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        classifier: nn.Module,
        indices: torch.Tensor,
        trace: bool = False,
        recorder: StateRecorder | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """One DIP batch: the fit with its rule; the output in [0, 1] and the rule."""
        rule = self.make_rule(x, classifier, y)
        if trace and hasattr(rule, "record_trace"):
            rule.record_trace()
        seeds = [item_seed(self.seed, i) for i in indices]
        last = fit_dip(x, seeds, self.dip, rule, observe_tail=self.observe_tail, recorder=recorder)
        return (last if rule is None else rule.result()).clamp(0, 1), rule

    def purify_pathwise(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """``purify`` whose backward is the exact pathwise gradient through the unrolled fit
        (``dip.pathwise``), with the rule's discrete choices held fixed; and the details."""
        if self.uses_labels:
            raise ValueError(f"{self.name} with its oracle on is given the true labels: it has no attacker's gradient")
        holder: list[list[dict[str, Any]]] = []
        return _PathwiseFit.apply(images, self, classifier, indices, holder), holder[0]

    def purify_rule_aware(
        self, images: torch.Tensor, classifier: nn.Module, indices: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """``purify`` whose backward is the rule's algebra with each iterate's Jacobian replaced by
        the measured transfer s(t) I (``dip.rule_aware``): one fit, like BPDA; and the details."""
        batch = self.dip_batch_on(images.device)
        outs, coefficients, details = [], [], []
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            with torch.no_grad():
                out, rule = self._fit_chunk(images[part].detach(), None, classifier, indices[part])
            outs.append(out)
            coefficients += rule_aware_coefficients(rule_selection(rule, len(out), self.dip.iterations - 1))
            details += self.details(rule, out, classifier, None)
        k = torch.tensor(coefficients, device=images.device)
        for d, k_i in zip(details, coefficients, strict=True):
            d["rule_coefficient"] = k_i
        return RuleAwareBackward.apply(images, torch.cat(outs), k), details

    def check_pathwise_memory(self, images: torch.Tensor, indices: torch.Tensor) -> None:
        """Refuse, before any fit, an exact gradient that would not fit in memory (``dip.pathwise``)
        or that would differentiate another fit than the one run (compile, fast)."""
        if self.dip.compile or self.dip.fast:
            raise ValueError(
                f"{self.name}: the exact gradient replays the eager fit in exact numerics, not the "
                f"{'compiled' if self.dip.compile else 'fast'} one; run it with compile=false and fast=false"
            )
        batch = self.dip_batch_on(images.device)
        x = images[:batch].detach()
        probe = DIPFit(x, [item_seed(self.seed, i) for i in indices[:batch]], self.dip)
        recorder = StateRecorder(self.exact_segment)
        recorder(0, probe)
        step_bytes = probe_step_bytes(UnrolledFit(probe, self.dip), recorder.states[0], x)
        chunks = -(-len(images) // batch)
        budget = self.exact_memory_bytes or available_bytes(images.device)
        # every chunk's states live until the backward; one chunk's segment graph at a time
        check_memory(
            self.name, len(x), step_bytes, chunks * recorder.nbytes(), self.dip.iterations, self.exact_segment, budget
        )


class _PathwiseFit(torch.autograd.Function):
    """The DIP defense forward (the true fit, its states kept) and the pathwise backward."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, purifier: DIPPurifier, classifier, indices, holder) -> torch.Tensor:
        purifier.check_pathwise_memory(images, indices)
        batch = purifier.dip_batch_on(images.device)
        outs, details, ctx.chunks = [], [], []
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            x = images[part].detach()
            recorder = StateRecorder(purifier.exact_segment)
            out, rule = purifier._fit_chunk(x, None, classifier, indices[part], recorder=recorder)
            selection = rule_selection(rule, len(x), purifier.dip.iterations - 1)
            ctx.chunks.append((part, x, recorder, selection, out))
            outs.append(out)
            details += purifier.details(rule, out, classifier, None)
        ctx.purifier = purifier
        holder.append(details)
        return torch.cat(outs).to(images.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = []
        with torch.enable_grad():
            for part, x, recorder, selection, out in ctx.chunks:
                unrolled = UnrolledFit(recorder.fit, ctx.purifier.dip)
                grads.append(
                    pathwise_vjp(unrolled, recorder.states, recorder.segment, selection, x, out, grad_output[part])
                )
        ctx.chunks = None  # the states are large: free them with the graph
        return torch.cat(grads), None, None, None, None
