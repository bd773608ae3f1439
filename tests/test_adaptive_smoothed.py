"""bpda_pgd / eot_pgd against a shattered defense: the NES backward, EOT over input noise with or
without seed draws, resubmission, the backward passed to the defended model, and the checks.

Known answers: NES on an identity defense with a linear victim estimates the victim's gradient;
a defense whose verdict is a hash of the input bytes is broken by resubmission alone.
"""

import hashlib

import pytest
import torch
from torch import nn

from dipdefense.attacks import build_attack
from dipdefense.attacks.adaptive import BPDAPGD, EOTPGD
from dipdefense.attacks.base import AttackError
from dipdefense.defenses import Purifier
from dipdefense.defenses.defended import DefendedClassifier, draw_indices

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Recorder(Purifier):
    """The identity, as a seeded defense without a gradient of its own (BPDA or NES needed); it
    records the indices and images of every call."""

    name, seeded = "recorder", True

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.images: list[torch.Tensor] = []

    def purify(self, images, classifier, indices, labels=None):
        self.calls.append(indices.tolist())
        self.images.append(images.detach().clone())
        return images.clone()


class Pathwise(Recorder):
    """A Recorder with the DIP defenses' differentiable fits, so gradient="exact" / "rule" pass."""

    name = "pathwise"

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def purify_pathwise(self, images, classifier, indices):
        self.asked.append("exact")
        return images * 1.0, []

    def purify_rule_aware(self, images, classifier, indices):
        self.asked.append("rule")
        return images * 1.0, []


def fools(image: torch.Tensor) -> bool:
    """The shattered defense's verdict: about 1 input in 8 (by its float32 bytes) is flipped."""
    return hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).digest()[0] < 32


class HashFlip(Recorder):
    """A caricature of a shattered defense: deterministic, but whether it fails (returns 1 - x,
    which MeanThreshold misreads) depends on a hash of the input's bytes."""

    name = "hash_flip"

    def purify(self, images, classifier, indices, labels=None):
        out = super().purify(images, classifier, indices)
        for i, image in enumerate(images):
            if fools(image):
                out[i] = 1 - image
        return out


class MeanThreshold(nn.Module):
    """Class 1 iff the mean pixel is above 0.5."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 100


def linear_victim() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).requires_grad_(False)


def test_nes_estimates_the_gradient_through_the_true_defense_in_one_call_per_step():
    victim, defense = linear_victim(), Recorder()
    defended = DefendedClassifier(victim, defense)
    x = 0.3 + 0.4 * torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    attack = BPDAPGD(eps=0.1, backward="nes", nes_samples=400, nes_sigma=1e-3)
    torch.manual_seed(0)
    estimate = attack._gradient(defended, x, y, torch.tensor([3, 5]))
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(victim(xg), y, reduction="sum").backward()
    cosine = nn.functional.cosine_similarity(estimate.flatten(1), xg.grad.flatten(1))
    assert (cosine > 0.9).all(), cosine
    assert defense.calls == [[3, 5] * 800]  # one batch: 2n copies of both images, the evaluation's seeds
    # with EOT over seeds, pair i uses unused draw i mod eot + 1, both of its copies
    defense.calls.clear()
    BPDAPGD(eps=0.1, backward="nes", nes_samples=3, eot=2)._gradient(defended, x, y, torch.tensor([3, 5]))
    pairs = [draw_indices(torch.tensor([3, 5]), d).tolist() for d in (1, 2, 1)]
    assert defense.calls == [sum(pairs + pairs, [])]
    # the attack: a verdict per iterate (B images) and one NES batch (2n B) per step, no gradient
    defense.calls.clear()
    attack = build_attack("bpda_pgd", eps=0.05, steps=3, backward="nes", nes_samples=4)
    with defended.bound_to(torch.tensor([3, 5])):
        adv = attack(defended, x, y)
    assert [len(c) for c in defense.calls] == [2, 16, 2, 16, 2, 16, 2]
    assert all(set(c) == {3, 5} for c in defense.calls)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and attack.last_history.shape == (2, 4)
    assert attack.gradient_label() == "nes" and attack.gradient_label(defended) == "nes"


def test_eot_over_input_noise_with_the_evaluations_seed_or_unused_ones():
    victim, defense = MeanThreshold(), Recorder()
    defended = DefendedClassifier(victim, defense)
    x, y = torch.full((2, 1, 4, 4), 0.3), torch.zeros(2, dtype=torch.long)
    attack = build_attack("eot_pgd", eps=0.05, steps=1, eot=3, noise=0.02, seed_draws=False, random_start=False)
    with defended.bound_to(torch.tensor([4, 9])):
        attack(defended, x, y)
    assert [len(c) for c in defense.calls] == [2, 6, 2]
    assert defense.calls[1] == [4, 9, 4, 9, 4, 9]  # the attacker knows the seed: every draw uses it
    iterate, draws = defense.images[0], defense.images[1].view(3, 2, 1, 4, 4)
    assert torch.equal(iterate, x)
    for d in range(3):
        offset = draws[d] - iterate
        assert offset.abs().max() < 0.02 * 6 and offset.abs().min() > 0  # noise on every pixel
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert attack.gradient_label(defended) == "bpda-identity+eot-noise" and attack.gradient_label() is None
    # seed_draws=True (the default): noise and the seeds the evaluation never uses
    defense.calls.clear()
    with defended.bound_to(torch.tensor([4, 9])):
        build_attack("eot_pgd", eps=0.05, steps=1, eot=2, noise=0.02)(defended, x, y)
    assert defense.calls[1] == torch.cat([draw_indices(torch.tensor([4, 9]), d) for d in (1, 2)]).tolist()
    with pytest.raises(AttackError, match="identical; accepted: noise > 0, seed_draws=True or eot <= 1"):
        build_attack("eot_pgd", eps=0.05, eot=2, seed_draws=False)
    build_attack("eot_pgd", eps=0.05, eot=1, seed_draws=False)  # one draw: nothing to be identical to


def test_resubmission_breaks_a_shattered_defense_the_attack_did_not():
    defense = HashFlip()
    defended = DefendedClassifier(MeanThreshold(), defense)
    # two images the defense gets right as they are, and one it gets wrong (broken at iterate 0)
    generator, right, wrong = torch.Generator().manual_seed(0), [], []
    while len(right) < 2 or not wrong:
        image = 0.25 + 0.1 * torch.rand(1, 4, 4, generator=generator)
        (wrong if fools(image) else right).append(image)
    x, y = torch.stack([right[0], wrong[0], right[1]]), torch.zeros(3, dtype=torch.long)
    plain = BPDAPGD(eps=0.02, steps=0, random_start=False)  # the clean image, judged once
    assert plain(defended, x, y).equal(x) and plain.last_history[:, 0].tolist() == [True, False, True]
    assert plain.last_resubmit is None
    defense.images.clear()
    torch.manual_seed(0)
    attack = BPDAPGD(eps=0.02, steps=0, random_start=False, resubmit=40, resubmit_scale=0.01)
    adv = attack(defended, x, y)
    verdicts = attack.last_resubmit
    assert verdicts.shape == (3, 40) and verdicts.dtype == torch.bool
    assert not verdicts[1].any()  # broken before: not resubmitted
    assert not verdicts[0].all() and not verdicts[2].all() and verdicts[[0, 2]].any(1).all()
    copies = defense.images[-1]  # the one resubmission batch: 40 copies of the two unbroken images
    assert copies.shape == (80, 1, 4, 4)
    assert (copies - x[[0, 2]].repeat(40, 1, 1, 1)).abs().max() <= 0.02 + 1e-6
    for row, column in ((0, 0), (2, 1)):
        first = int((~verdicts[row]).float().argmax())
        assert torch.equal(adv[row], copies[first * 2 + column])  # the first copy that fools
    assert torch.equal(adv[1], x[1])
    assert (adv - x).abs().max() <= 0.02 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (defended(adv).argmax(1) != y).all()  # a later defended call agrees


def test_resubmission_seeds_copies_as_the_evaluation_does_or_with_unused_seeds():
    defense = Recorder()  # never fooled: every image is resubmitted
    defended = DefendedClassifier(MeanThreshold(), defense)
    x, y = torch.full((2, 1, 4, 4), 0.3), torch.zeros(2, dtype=torch.long)
    indices = torch.tensor([4, 9])
    attack = build_attack("bpda_pgd", eps=0.03, steps=1, resubmit=3, resubmit_over="seeds")
    with defended.bound_to(indices):
        adv = attack(defended, x, y)
    assert defense.calls[-1] == torch.cat([draw_indices(indices, d) for d in (1, 2, 3)]).tolist()
    assert torch.equal(defense.images[-1], adv.repeat(3, 1, 1, 1))  # the final iterate itself
    assert attack.last_resubmit.shape == (2, 3) and attack.last_resubmit.all()
    attack = build_attack("bpda_pgd", eps=0.03, steps=1, resubmit=3)
    with defended.bound_to(indices):
        adv = attack(defended, x, y)
    assert defense.calls[-1] == [4, 9] * 3  # noisy copies under the evaluation's own seed
    copies = defense.images[-1].view(3, 2, 1, 4, 4)
    assert not torch.equal(copies[0], copies[1]) and (copies - x).abs().max() <= 0.03 + 1e-6
    assert (copies - adv).abs().max() <= 1 / 255 + 1e-6
    # unbound: each copy is seeded by its own bytes, as a later defended(copy) call seeds it
    adv = attack(defended, x, y)
    from dipdefense.defenses.defended import hashed_indices

    assert defense.calls[-1] == hashed_indices(defense.images[-1]).tolist()


def test_backward_is_passed_to_the_defended_model():
    class Asking(DefendedClassifier):
        def purified(self, images, indices=None, gradient=None):
            self.asked.append(gradient)
            return super().purified(images, indices, gradient)

    defense = Pathwise()
    defended = Asking(linear_victim(), defense)
    defended.asked = []
    x, y = 0.3 + 0.4 * torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    attack = build_attack("bpda_pgd", eps=0.05, steps=2, backward="exact")
    attack(defended, x, y)
    assert defended.asked.count("exact") == 2 and defense.asked == ["exact", "exact"]
    assert attack.gradient_label(defended) == "exact"
    defended.asked, defense.asked = [], []
    build_attack("eot_pgd", eps=0.05, steps=1, eot=2, noise=0.01, backward="rule")(defended, x, y)
    assert defended.asked.count("rule") == 1 and defense.asked == ["rule"]
    defended.asked = []
    build_attack("bpda_pgd", eps=0.05, steps=1)(defended, x, y)
    assert defended.asked.count("identity") == 1 and defense.asked == ["rule"]  # the default: BPDA


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backward": "spsa"}, "unknown backward 'spsa'; accepted: identity, exact, rule, nes"),
        ({"on_range": True, "backward": "exact"}, "needs backward='identity'"),
        ({"nes_samples": 0}, "nes_samples >= 1"),
        ({"nes_sigma": 0.0}, "nes_sigma > 0"),
        ({"noise": -0.01, "eot": 1}, "noise >= 0"),
        ({"noise": 0.01}, "needs eot >= 1"),
        ({"noise": 0.01, "eot": 1, "backward": "nes"}, "accepted: noise=0 with backward='nes'"),
        ({"eot": 3, "seed_draws": False}, "accepted: noise > 0, seed_draws=True or eot <= 1"),
        ({"resubmit": -1}, "resubmit >= 0"),
        ({"resubmit": 2, "resubmit_scale": 0.0}, r"resubmit_scale in \(0, eps\] = \(0, 0.05\]"),
        ({"resubmit": 2, "resubmit_scale": 0.1}, r"resubmit_scale in \(0, eps\] = \(0, 0.05\]"),
        ({"resubmit": 2, "resubmit_over": "runs"}, "unknown resubmit_over 'runs'; accepted: noise, seeds"),
    ],
)
def test_smoothing_and_resubmission_arguments_are_checked(params, message):
    with pytest.raises(AttackError, match=message):
        BPDAPGD(eps=0.05, **params)


def test_registry_accepts_the_new_parameters_and_defaults_keep_the_cache_key():
    build_attack("bpda_pgd", eps=0.05, resubmit=0, noise=0.0)
    build_attack("eot_pgd", eps=0.05, resubmit=0, noise=0.0, seed_draws=False, eot=1)
    with pytest.raises(AttackError, match="nes_samples must be an integer >= 1"):
        build_attack("bpda_pgd", eps=0.05, nes_samples=0)
    with pytest.raises(AttackError, match="noise must be a number >= 0"):
        build_attack("eot_pgd", eps=0.05, noise=-1.0)
    # params() is the cache key: at their defaults the new arguments are left out, as before them
    old = {"name", "library", "norm", "eps", "steps", "alpha", "random_start", "eot", "evasion_weight", "select"}
    assert set(build_attack("bpda_pgd", eps=0.05).params()) == old | {"step", "on_range"}
    assert set(build_attack("eot_pgd", eps=0.05).params()) == old
    assert build_attack("eot_pgd", eps=0.05, resubmit=4).params()["resubmit"] == 4
    assert EOTPGD(eps=0.05, noise=0.01).noise == 0.01


def test_nes_and_resubmission_draws_are_per_image():
    from dipdefense.common.per_image_rng import per_image_draws

    defended = DefendedClassifier(linear_victim(), Recorder())
    x = 0.3 + 0.4 * torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])

    def run(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        attack = BPDAPGD(eps=0.05, steps=1, backward="nes", nes_samples=4, resubmit=3)
        with per_image_draws([11, 12][: len(rows)]) as draws:
            adv = attack(defended, x[rows], y[rows])
        assert draws.shared_draws == 0
        return adv, defended.defense.images[-1]  # the resubmitted copies

    both, both_copies = run([0, 1])
    alone, alone_copies = run([0])
    assert torch.allclose(both[0], alone[0]) and torch.allclose(both_copies[0::2], alone_copies)
