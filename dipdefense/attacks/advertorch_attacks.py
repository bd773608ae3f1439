"""Attacks wrapped from advertorch (imported only through ``common.advertorch_compat``)."""

import warnings

import torch
from torch import nn

from dipdefense.attacks.base import Attack


class DDN(Attack):
    """DDN, Rony et al. 2019 ("Decoupling Direction and Norm for Efficient Gradient-Based L2
    Adversarial Attacks and Defenses"); wraps ``advertorch.attacks.DDNL2Attack``, clipped to
    [0, 1]. A minimum-norm attack: no eps. (Paper 002 ran foolbox's DDN.)

    Distance measure: L2. Images it cannot fool come back unchanged.

    Arguments:
        steps (int): iterations (advertorch's ``nb_iter``). Default: 100.
        gamma (float): factor by which the norm grows or shrinks each iteration. Default: 0.05.
        init_norm (float): initial perturbation norm. Default: 1.0.
        quantize (bool): round to ``levels`` grey levels at each iteration. Default: True.
        levels (int): quantisation levels (256 for 8-bit images). Default: 256.
    """

    name = "ddn"
    library = "advertorch"
    needs_gradient = True
    norm = "l2"

    def __init__(
        self, steps: int = 100, gamma: float = 0.05, init_norm: float = 1.0, quantize: bool = True, levels: int = 256
    ) -> None:
        self.steps, self.gamma, self.init_norm = int(steps), float(gamma), float(init_norm)
        self.quantize, self.levels = bool(quantize), int(levels)

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from dipdefense.common.advertorch_compat import DDNL2Attack

        attack = DDNL2Attack(
            model,
            nb_iter=self.steps,
            gamma=self.gamma,
            init_norm=self.init_norm,
            quantize=self.quantize,
            levels=self.levels,
            clip_min=0.0,
            clip_max=1.0,
        )
        with warnings.catch_warnings():
            # advertorch steps its cosine schedule before the optimiser: its behaviour, not ours to change
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            return attack.perturb(images, labels)
