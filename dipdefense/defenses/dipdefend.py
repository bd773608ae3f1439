"""``dipdefend``: Dai et al. 2020, the baseline of paper 002, as a defense."""

from typing import Any

from dipdefense.defenses.dip_purifier import DIPPurifier
from dipdefense.defenses.registry import register_defense
from dipdefense.dip.dipdefend import DIPDefendRule, DIPDefendSettings


class DIPDefend(DIPPurifier):
    """``dipdefend``: Dai et al. 2020, the baseline of paper 002 (``dipdefense/dip/dipdefend.py``).

    Arguments: network "dipdefend_cifar" (their CIFAR net), iterations 4000, lr 0.01,
    noise_scale 1/10, optimize_input True (they optimise the input too), lam 0.002,
    patch 32, dip_batch None (32 on a CPU, 128 on a GPU), seed 0; init "xavier", input_jitter 0,
    output_ema 0, pad "reflection", cuda_graph False, adam_eps 1e-8, compile False, fast False (``DIPPurifier``).
    The PSNR curve is read at every iterate.
    """

    name = "dipdefend"

    def __init__(
        self,
        network: str | dict[str, Any] = "dipdefend_cifar",
        iterations: int = 4000,
        lr: float = 0.01,
        noise_scale: float = 0.1,
        optimize_input: bool = True,
        lam: float = 0.002,
        patch: int = 32,
        dip_batch: int | None = None,
        seed: int = 0,
        init: str = "xavier",
        input_jitter: float = 0.0,
        output_ema: float = 0.0,
        pad: str = "reflection",
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
            1,
            dip_batch,
            seed,
            optimize_input,
            init=init,
            input_jitter=input_jitter,
            output_ema=output_ema,
            pad=pad,
            cuda_graph=cuda_graph,
            adam_eps=adam_eps,
            compile=compile,
            fast=fast,
        )
        self.rule = DIPDefendSettings(lam=lam, patch=patch)

    def rule_settings(self) -> dict[str, Any]:
        return vars(self.rule)

    def make_rule(self, images, classifier, labels):
        return DIPDefendRule(images, self.rule)

    def details(self, rule, images, classifier, labels):
        return [{"iterations": int(t) + 1} for t in rule.best_t]


register_defense(DIPDefend.name, DIPDefend)
