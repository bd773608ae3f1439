"""``deep_protection``: paper 001's Swish DIP stopped at a fixed iteration, as a defense."""

from typing import Any

import torch

from dipdefense.defenses.dip_purifier import DIPPurifier
from dipdefense.defenses.registry import register_defense
from dipdefense.dip.early_stopping import OracleTop5Stop, StaticErrorSplit


class DeepProtection(DIPPurifier):
    """``deep_protection``: Ambati & Kulkarni (paper 001): a Swish DIP denoiser stopped at a
    fixed iteration (static mode, 1750 at 224 px), or, with ``oracle=True``, Sec. 4.1's
    automatic termination for analysis (``dipdefense/dip/early_stopping.py``): given the true labels,
    check every 50 iterations (up to 3000) and stop when the true label is in the top 5 and
    the adversarial label is not. Records say whether a wrong answer over- or underfit; in
    static mode that split (Sec. 4.2, Fig. 5) needs ``error_split=True``, which gives the
    defense the true labels to watch the fit with and leaves its output unchanged.

    Arguments: network "deep_protection" (official denoiser, Swish, 5 scales: images of at
    least 33 px; "deep_protection_cifar" is its 4-scale version for 32x32,
    "deep_protection_small" the Swish net at paper 002's CIFAR size), iterations 1750 (static
    mode; the oracle's cap is 3000 in the paper), lr 0.01, noise_scale 0.1, oracle False,
    top_k 5 (the oracle's top-k), error_split False, check_every 50, dip_batch None (8 on a CPU,
    128 on a GPU), seed 0;
    init "xavier", input_jitter 0, output_ema 0, pad "reflection", cuda_graph False, adam_eps 1e-8, compile False, fast False (``DIPPurifier``).
    """

    name = "deep_protection"
    cpu_dip_batch = 8  # the 224-px network's activations are large

    def __init__(
        self,
        network: str | dict[str, Any] = "deep_protection",
        iterations: int = 1750,
        lr: float = 0.01,
        noise_scale: float = 0.1,
        oracle: bool = False,
        check_every: int = 50,
        dip_batch: int | None = None,
        seed: int = 0,
        init: str = "xavier",
        input_jitter: float = 0.0,
        output_ema: float = 0.0,
        pad: str = "reflection",
        top_k: int = 5,
        error_split: bool = False,
        cuda_graph: bool = False,
        adam_eps: float = 1e-8,
        compile: bool = False,
        fast: bool = False,
    ) -> None:
        super().__init__(
            network,
            iterations,
            lr,
            noise_scale,
            check_every,
            dip_batch,
            seed,
            init=init,
            input_jitter=input_jitter,
            output_ema=output_ema,
            pad=pad,
            cuda_graph=cuda_graph,
            adam_eps=adam_eps,
            compile=compile,
            fast=fast,
        )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (the oracle's top-k; the paper's is 5), got {top_k}")
        self.oracle, self.top_k, self.error_split = oracle, top_k, error_split
        self.uses_labels = oracle or error_split

    def rule_settings(self) -> dict[str, Any]:
        # Added after runs were recorded: named in a manifest only when they change something.
        return {
            "oracle": self.oracle,
            # the oracle no longer judges the untrained output at t = 0: a run recorded before is not resumed
            **({"first_check": self.dip.observe_every} if self.oracle else {}),
            **({"top_k": self.top_k} if self.oracle and self.top_k != 5 else {}),
            **({"error_split": True} if self.error_split else {}),
        }

    def make_rule(self, images, classifier, labels):
        if self.uses_labels and labels is None:
            raise ValueError(
                f"deep_protection with {'oracle' if self.oracle else 'error_split'}=True needs the true labels"
            )
        if self.oracle:
            with torch.no_grad():
                adversarial = classifier(images).argmax(1)
            return OracleTop5Stop(
                images, classifier, labels, adversarial, k=self.top_k, first_check=self.dip.observe_every
            )
        if self.error_split:
            return StaticErrorSplit(images, classifier, labels, first_check=self.dip.observe_every)
        return None  # static termination: the last iterate

    def details(self, rule, images, classifier, labels):
        iterations = rule.iterations.tolist() if self.oracle else [self.dip.iterations] * len(images)
        if rule is None:  # static mode, not watched
            return [{"iterations": t} for t in iterations]
        with torch.no_grad():
            correct = classifier(images).argmax(1) == labels
        return [
            {"iterations": int(t), "error_type": e} for t, e in zip(iterations, rule.error_types(correct), strict=True)
        ]


register_defense(DeepProtection.name, DeepProtection)
