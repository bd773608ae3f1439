"""Adversarial attacks as thin wrappers over torchattacks, advertorch and foolbox (pure torch).

``build_attack("pgd", eps=8/255)(model, images, labels)`` returns adversarial images in
[0, 1]; the model takes [0, 1] images (normalisation inside it) and returns logits.
"""

from dipdefense.attacks.base import Attack, AttackError
from dipdefense.attacks.registry import ATTACKS, attack_parameters, build_attack

__all__ = ["ATTACKS", "Attack", "AttackError", "attack_parameters", "build_attack"]
