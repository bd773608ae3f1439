"""White-box gradient attacks wrapped from torchattacks (the implementations paper 002 used).

torchattacks fixes the device when an attack object is built, so each call builds a
fresh one for the model it is given (cheap). ``set_normalization_used`` is never called:
normalisation lives inside the model, so torchattacks works in [0, 1] pixel space.
"""

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from dipdefense.attacks.base import Attack, check_eps
from dipdefense.common.per_image_rng import restricted_rows


class _Torchattack(Attack):
    library = "torchattacks"
    needs_gradient = True
    _class: ClassVar[str]  # the torchattacks class name

    def _kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.params().items() if k not in ("name", "library", "norm") and v is not None}

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torchattacks

        attack = getattr(torchattacks, self._class)(model, **self._kwargs())
        attack.set_device(images.device)  # also covers a model without parameters
        return attack(images, labels)


class _LinfTorchattack(_Torchattack):
    norm = "linf"
    eps_mode = "required"

    def __init__(self, eps: float) -> None:
        self.eps = check_eps(self.name, eps, self.norm)


class FGSM(_LinfTorchattack):
    """FGSM, Goodfellow et al. 2015 ("Explaining and Harnessing Adversarial Examples");
    wraps ``torchattacks.FGSM``.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
    """

    name = "fgsm"
    _class = "FGSM"


class PGD(_LinfTorchattack):
    """PGD, Madry et al. 2018 ("Towards Deep Learning Models Resistant to Adversarial Attacks");
    wraps ``torchattacks.PGD``.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        alpha (float): step size. Default: 2/255.
        steps (int): number of steps. Default: 10.
        random_start (bool): start from a uniform random point of the eps ball. Default: True.
    """

    name = "pgd"
    _class = "PGD"

    def __init__(self, eps: float, alpha: float = 2 / 255, steps: int = 10, random_start: bool = True) -> None:
        super().__init__(eps)
        self.alpha, self.steps, self.random_start = float(alpha), int(steps), bool(random_start)


class BIM(_LinfTorchattack):
    """BIM (I-FGSM), Kurakin et al. 2017 ("Adversarial Examples in the Physical World");
    wraps ``torchattacks.BIM``.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        alpha (float): step size. Default: 2/255.
        steps (int): number of steps; 0 picks the paper's min(eps*255 + 4, 1.25*eps*255). Default: 10.
    """

    name = "bim"
    _class = "BIM"

    def __init__(self, eps: float, alpha: float = 2 / 255, steps: int = 10) -> None:
        super().__init__(eps)
        self.alpha, self.steps = float(alpha), int(steps)


class MIFGSM(_LinfTorchattack):
    """MI-FGSM, Dong et al. 2018 ("Boosting Adversarial Attacks with Momentum");
    wraps ``torchattacks.MIFGSM``.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        alpha (float): step size. Default: 2/255.
        steps (int): number of steps. Default: 10.
        decay (float): momentum factor. Default: 1.0.
    """

    name = "mifgsm"
    _class = "MIFGSM"

    def __init__(self, eps: float, alpha: float = 2 / 255, steps: int = 10, decay: float = 1.0) -> None:
        super().__init__(eps)
        self.alpha, self.steps, self.decay = float(alpha), int(steps), float(decay)


class CW(_Torchattack):
    """C&W L2, Carlini & Wagner 2017 ("Towards Evaluating the Robustness of Neural Networks");
    wraps ``torchattacks.CW``. A minimum-norm attack: no eps.

    Distance measure: L2. No binary search over c (torchattacks has none). torchattacks'
    own default of 50 steps often stops short of the boundary; 100 Adam steps at c=1 is
    the default here. Images it cannot fool come back unchanged.

    Arguments:
        c (float): weight of the misclassification term against the L2 term. Default: 1.0.
        kappa (float): confidence margin. Default: 0.0.
        steps (int): Adam steps. Default: 100.
        lr (float): Adam learning rate. Default: 0.01.
    """

    name = "cw"
    _class = "CW"
    norm = "l2"

    def __init__(self, c: float = 1.0, kappa: float = 0.0, steps: int = 100, lr: float = 0.01) -> None:
        self.c, self.kappa, self.steps, self.lr = float(c), float(kappa), int(steps), float(lr)


class DeepFool(_Torchattack):
    """DeepFool, Moosavi-Dezfooli et al. 2016 ("DeepFool: a simple and accurate method to fool
    deep neural networks"); wraps ``torchattacks.DeepFool``. A minimum-norm attack: no eps.

    Distance measure: L2. torchattacks loops over the images and takes one backward pass per
    class per step (fine for 10 classes, slow for 1000).

    Arguments:
        steps (int): maximum linearisation steps. Default: 50.
        overshoot (float): step enlargement to cross the boundary. Default: 0.02.
    """

    name = "deepfool"
    _class = "DeepFool"
    norm = "l2"

    def __init__(self, steps: int = 50, overshoot: float = 0.02) -> None:
        self.steps, self.overshoot = int(steps), float(overshoot)


class AutoAttack(_LinfTorchattack):
    """AutoAttack, Croce & Hein 2020 ("Reliable Evaluation of Adversarial Robustness with an
    Ensemble of Diverse Parameter-free Attacks"); wraps ``torchattacks.AutoAttack``: APGD-CE,
    APGD-T, FAB-T and Square in turn, each on the images the previous ones left right.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        version (str): "standard" (the four attacks) or "rand" (APGD-CE and APGD-DLR with
            EOT, for randomised defenses). Default: "standard".
        n_classes (int): number of classes (APGD-T's targets). Default: 10.
        seed (int): seed of its random starts. Default: 0.
    """

    name = "autoattack"
    _class = "AutoAttack"

    def __init__(self, eps: float, version: str = "standard", n_classes: int = 10, seed: int = 0) -> None:
        super().__init__(eps)
        self.version, self.n_classes, self.seed = str(version), int(n_classes), int(seed)

    def _kwargs(self) -> dict[str, Any]:
        return {"norm": "Linf", **super()._kwargs()}


class APGD(_LinfTorchattack):
    """APGD, Croce & Hein 2020 (the step-size-free PGD of AutoAttack); wraps ``torchattacks.APGD``.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        steps (int): iterations. Default: 100.
        loss (str): "ce" or "dlr" (the difference-of-logits ratio). Default: "ce".
        n_restarts (int): random restarts. Default: 1.
        eot_iter (int): gradients averaged per step (EOT, for randomised models). Default: 1.
        seed (int): seed of its random starts. Default: 0.

    Through a seeded defense (a DIP fit seeded per image) each restart queries the images no
    restart has broken yet, under those images' own seeds (``restart_on_the_unbroken``).
    """

    name = "apgd"
    _class = "APGD"
    uses_bpda = True  # through a DIP defense its gradient is the defended model's BPDA (Croce et al. 2022)

    def __init__(
        self, eps: float, steps: int = 100, loss: str = "ce", n_restarts: int = 1, eot_iter: int = 1, seed: int = 0
    ) -> None:
        super().__init__(eps)
        self.steps, self.loss, self.n_restarts = int(steps), str(loss), int(n_restarts)
        self.eot_iter, self.seed = int(eot_iter), int(seed)

    def _kwargs(self) -> dict[str, Any]:
        return {"norm": "Linf", **super()._kwargs()}

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torchattacks

        attack = torchattacks.APGD(model, **self._kwargs())
        attack.set_device(images.device)
        return restart_on_the_unbroken(attack, model, images, labels)


def restart_on_the_unbroken(attack: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torchattacks.APGD's restart loop (each restart attacks the images no restart has broken yet)
    with the rows it attacks named: to a bound defended model (``restricted_to``), so that a seeded
    defense (a DIP fit seeded per image) knows which images a restart's queries are, which
    torchattacks' own loop does not say (the defended model refuses it); and to the per-image draws
    (``restricted_rows``), so that each image's random start is its own, whatever else its chunk
    holds. In torchattacks' loop the start of a subset comes from the global generator: an image's
    start, and so its verdict, changed with the images beside it (issue 39)."""
    adversarial = images.clone()
    with torch.no_grad():
        correct = attack.get_logits(images).argmax(1) == labels
    torch.manual_seed(attack.seed)  # as torchattacks seeds its restarts
    restricted = getattr(model, "restricted_to", None)
    for _ in range(attack.n_restarts):
        rows = correct.nonzero().flatten()
        if rows.numel() == 0:
            break
        with restricted(rows) if restricted else contextlib.nullcontext(), restricted_rows(rows):
            _, still_correct, _, attacked = attack.attack_single_run(images[rows], labels[rows])
        broken = ~still_correct.bool()
        correct[rows[broken]] = False
        adversarial[rows[broken]] = attacked[broken]
    return adversarial


class Square(_LinfTorchattack):
    """Square Attack, Andriushchenko et al. 2020 ("Square Attack: a query-efficient black-box
    adversarial attack via random search"); wraps ``torchattacks.Square``. Score-based: it reads
    the logits, never a gradient, so it runs through any defense.

    Distance measure: Linf

    Arguments:
        eps (float): maximum perturbation, in [0, 1] pixel units (8/255 = 0.0314). Required.
        n_queries (int): query budget per image. Default: 5000.
        p_init (float): initial share of pixels changed. Default: 0.8.
        seed (int): seed of its random search. Default: 0.
    """

    name = "square"
    _class = "Square"
    needs_gradient = False

    def __init__(self, eps: float, n_queries: int = 5000, p_init: float = 0.8, seed: int = 0) -> None:
        super().__init__(eps)
        self.n_queries, self.p_init, self.seed = int(n_queries), float(p_init), int(seed)

    def _kwargs(self) -> dict[str, Any]:
        return {"norm": "Linf", **super()._kwargs()}
