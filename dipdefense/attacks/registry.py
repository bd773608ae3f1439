"""One name per attack; ``build_attack`` checks the budget and parameters and builds it."""

import inspect
from typing import Any

from dipdefense.attacks.adaptive import BPDAPGD, EOTPGD, RandomNoise
from dipdefense.attacks.advertorch_attacks import DDN
from dipdefense.attacks.base import Attack, AttackError
from dipdefense.attacks.foolbox_attacks import (
    AdditiveGaussianNoise,
    BlendedUniformNoise,
    NewtonFool,
    SaltAndPepper,
)
from dipdefense.attacks.hopskipjump import HopSkipJump
from dipdefense.attacks.latent_space import LatentSpaceAttack
from dipdefense.attacks.torchattacks_attacks import APGD, BIM, CW, FGSM, MIFGSM, PGD, AutoAttack, DeepFool, Square
from dipdefense.common.parameters import check_parameter

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        FGSM,
        PGD,
        BIM,
        MIFGSM,
        CW,
        DeepFool,
        DDN,
        HopSkipJump,
        AdditiveGaussianNoise,
        BlendedUniformNoise,
        SaltAndPepper,
        NewtonFool,
        AutoAttack,
        APGD,
        Square,
        BPDAPGD,
        EOTPGD,
        RandomNoise,
        LatentSpaceAttack,
    )
}


def attack_parameters(name: str) -> list[str]:
    """The keyword parameters ``build_attack`` accepts for ``name`` besides ``eps``."""
    signature = inspect.signature(ATTACKS[name].__init__)
    return [p for p in signature.parameters if p not in ("self", "eps")]


# Counts where 0 means "none" (a seed, EOT draws, resubmitted copies); every other count must be at least 1.
_MAY_BE_ZERO = {"seed", "eot", "resubmit"}


def build_attack(name: str, eps: float | None = None, **params: Any) -> Attack:
    """The attack registered as ``name``.

    Arguments:
        name: one of ``ATTACKS``.
        eps: budget in [0, 1] pixel units (8/255 = 0.0314): required by the L-inf attacks
            (fgsm, pgd, bim, mifgsm, autoattack, apgd, square, bpda_pgd, eot_pgd,
            random_noise; latent_space takes only 1.0), optional for hopskipjump, refused by the minimum-norm
            and noise attacks. Default: None.
        params: the attack's other arguments (see its class); unknown ones are refused.
    """
    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; accepted: {', '.join(ATTACKS)}")
    cls = ATTACKS[name]
    accepted = attack_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise AttackError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}"
            + ("" if cls.eps_mode == "none" else " (and eps)")
        )
    for key, value in params.items():
        annotation = inspect.signature(cls.__init__).parameters[key].annotation
        check_parameter(name, key, value, annotation, _MAY_BE_ZERO, AttackError)
    if cls.eps_mode == "required" and eps is None:
        raise AttackError(f"{name}: eps is required (an L-inf budget in [0, 1] pixel units, e.g. 8/255 = 0.0314)")
    if cls.eps_mode == "none":
        if eps is not None:
            raise AttackError(f"{name} is a minimum-norm attack (it searches for the smallest perturbation): drop eps")
        return cls(**params)
    return cls(eps=eps, **params)
