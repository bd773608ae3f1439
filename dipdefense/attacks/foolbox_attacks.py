"""Noise and NewtonFool attacks wrapped from foolbox 3 (paper 001's), and the foolbox model every
foolbox attack here queries.

foolbox is imported inside ``_run`` (it is slow to import). ``fb.PyTorchModel`` moves the
model to its ``device`` argument, which defaults to CUDA when there is one, so the device
of the images is always passed. For minimum-norm runs foolbox returns, for images it could
not fool, whatever its search ended on (for the blended-noise search: pure noise); those
images come back unchanged here instead, so a failed attack never degrades an image.
"""

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dipdefense.attacks.base import Attack


def foolbox_model(model: nn.Module, images: torch.Tensor) -> Any:
    import foolbox as fb

    return fb.PyTorchModel(model, bounds=(0, 1), device=images.device)


def _keep_failures_clean(images: torch.Tensor, adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    return torch.where(success.view(-1, *[1] * (images.dim() - 1)), adv, images)


class _FoolboxMinimization(Attack):
    library = "foolbox"

    def _attack(self) -> Any:
        raise NotImplementedError

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, clipped, success = self._attack()(foolbox_model(model, images), images, labels, epsilons=None)
        return _keep_failures_clean(images, clipped, success)


class AdditiveGaussianNoise(Attack):
    """Additive Gaussian noise, raised until misclassified (Rauber et al. 2017, foolbox's
    AdditiveGaussianNoiseAttack; paper 001's "AGN"); wraps
    ``foolbox.attacks.L2AdditiveGaussianNoiseAttack``.

    foolbox 3 has only fixed-size noise attacks, so the search of foolbox 2's
    AdditiveGaussianNoiseAttack (the one paper 001 describes: noise std raised over
    ``steps`` equal increments up to ``max_std`` = 1/sqrt(3), one draw each, until the
    image is misclassified) is run over it: std s is foolbox's L2 size s * sqrt(C*H*W),
    and each step attacks only the images not yet fooled. Images still not fooled at
    ``max_std`` come back unchanged. No fixed budget: norm "none", eps None.

    Arguments:
        steps (int): number of std values tried. Default: 1000.
        max_std (float): largest std, in [0, 1] pixel units. Default: 1/sqrt(3) = 0.577.
    """

    name = "gaussian_noise"
    library = "foolbox"

    def __init__(self, steps: int = 1000, max_std: float = 1 / math.sqrt(3)) -> None:
        self.steps, self.max_std = int(steps), float(max_std)

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import foolbox as fb

        fmodel = foolbox_model(model, images)
        attack = fb.attacks.L2AdditiveGaussianNoiseAttack()
        scale = math.sqrt(images[0].numel())
        adv = images.clone()
        todo = torch.arange(len(images), device=images.device)
        for std in np.linspace(0, self.max_std, self.steps + 1)[1:]:
            _, clipped, success = attack(fmodel, images[todo], labels[todo], epsilons=float(std) * scale)
            adv[todo[success]] = clipped[success]
            todo = todo[~success]
            if len(todo) == 0:
                break
        return adv


class BlendedUniformNoise(_FoolboxMinimization):
    """Blended uniform noise (Rauber et al. 2017, foolbox; paper 001's "BUN"); wraps
    ``foolbox.attacks.LinearSearchBlendedUniformNoiseAttack``: draws a uniform-noise image
    that is misclassified, then blends the input towards it along a line search until the
    blend is misclassified. No fixed budget: norm "none", eps None.

    Arguments:
        directions (int): most noise images drawn to find a misclassified one. Default: 1000.
        steps (int): blending steps of the line search. Default: 1000.
    """

    name = "uniform_noise"

    def __init__(self, directions: int = 1000, steps: int = 1000) -> None:
        self.directions, self.steps = int(directions), int(steps)

    def _attack(self) -> Any:
        import foolbox as fb

        return fb.attacks.LinearSearchBlendedUniformNoiseAttack(
            distance=fb.distances.l2, directions=self.directions, steps=self.steps
        )


class SaltAndPepper(_FoolboxMinimization):
    """Salt-and-pepper noise, raised until misclassified (Rauber et al. 2017, foolbox; paper
    001's "SPN"); wraps ``foolbox.attacks.SaltAndPepperNoiseAttack``. No fixed budget: norm
    "none", eps None.

    Arguments:
        steps (int): noise-probability steps. Default: 1000.
        across_channels (bool): the same noise in every channel of a pixel. Default: True.
    """

    name = "salt_and_pepper"

    def __init__(self, steps: int = 1000, across_channels: bool = True) -> None:
        self.steps, self.across_channels = int(steps), bool(across_channels)

    def _attack(self) -> Any:
        import foolbox as fb

        return fb.attacks.SaltAndPepperNoiseAttack(steps=self.steps, across_channels=self.across_channels)


class NewtonFool(_FoolboxMinimization):
    """NewtonFool, Jang et al. 2017 ("Objective Metrics and Gradient Descent Algorithms for
    Adversarial Examples in Machine Learning"); wraps ``foolbox.attacks.NewtonFoolAttack``.
    A minimum-norm attack: no eps.

    Distance measure: L2. Images it cannot fool come back unchanged.

    Arguments:
        steps (int): update steps. Default: 100.
        stepsize (float): the paper's eta, size of each step. Default: 0.01.
    """

    name = "newtonfool"
    norm = "l2"
    needs_gradient = True

    def __init__(self, steps: int = 100, stepsize: float = 0.01) -> None:
        self.steps, self.stepsize = int(steps), float(stepsize)

    def _attack(self) -> Any:
        import foolbox as fb

        return fb.attacks.NewtonFoolAttack(steps=self.steps, stepsize=self.stepsize)
