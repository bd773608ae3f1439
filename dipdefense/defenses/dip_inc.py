"""``dip_inc``: paper 004's DIP with early stopping (Sec. 2.4, 4.4), as a defense."""

from typing import Any

from dipdefense.defenses.dip_purifier import DIPPurifier
from dipdefense.defenses.registry import register_defense
from dipdefense.dip.early_stopping import MSEEarlyStop


class DIPInc(DIPPurifier):
    """``dip_inc``: the DIP variant of INC, Ilyas et al. (paper 004, Sec. 2.4, 4.4): early
    stopping at ``iterations`` (500; 100 for large eps) or when MSE < ``threshold``
    (0.005 on [-1, 1] images = 0.00125 here).

    Arguments: network "cifar", iterations 500, lr 0.01, noise_scale 1/30, threshold 0.00125,
    dip_batch None (32 on a CPU, 128 on a GPU), seed 0; init "xavier", input_jitter 0, output_ema 0,
    pad "reflection", cuda_graph False, adam_eps 1e-8, compile False, fast False (``DIPPurifier``).
    """

    name = "dip_inc"

    def __init__(
        self,
        network: str | dict[str, Any] = "cifar",
        iterations: int = 500,
        lr: float = 0.01,
        noise_scale: float = 1 / 30,
        threshold: float = 0.00125,
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
            init=init,
            input_jitter=input_jitter,
            output_ema=output_ema,
            pad=pad,
            cuda_graph=cuda_graph,
            adam_eps=adam_eps,
            compile=compile,
            fast=fast,
        )
        self.threshold = threshold

    def rule_settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def make_rule(self, images, classifier, labels):
        return MSEEarlyStop(images, self.threshold)

    def details(self, rule, images, classifier, labels):
        return [{"iterations": int(t)} for t in rule.iterations]


register_defense(DIPInc.name, DIPInc)
