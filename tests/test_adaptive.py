"""Defense-aware evaluation: the defended model, BPDA, EOT, the noise baseline, threat models.

Known answers: BPDA-PGD on the undefended victim is torchattacks' PGD step for step; the BPDA
backward is the victim's gradient at the purified image; INC's rejection gradient is the
envelope-theorem one; an unbounded attack fools every image through a real DIP defense.
"""

import contextlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import evaluate
from dipdefense.attacks import build_attack
from dipdefense.attacks.base import AttackError
from dipdefense.attacks.hopskipjump import HopSkipJump
from dipdefense.common.errors import UserError
from dipdefense.defenses import Purified, Purifier, build_defense
from dipdefense.defenses.base import Detector, IdentityDefense
from dipdefense.defenses.defended import (
    DRAW_STRIDE,
    HASHED_INDEX_BASE,
    DefendedClassifier,
    draw_indices,
    hashed_indices,
)
from dipdefense.evaluation.attack_specs import check_against_defense, expand_attacks
from dipdefense.evaluation.rows import worst_case_rows
from dipdefense.evaluation.sample_log import read_records
from tests.conftest import TINY_VICTIM_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_victim_module() -> nn.Module:
    from dipdefense.nets import build_classifier

    torch.manual_seed(0)
    return build_classifier(**TINY_VICTIM_CONFIG).eval().requires_grad_(False)


class SeededNoise(Purifier):
    """A cheap seeded purifier: adds noise drawn from each image's index (like a DIP fit,
    its output depends on the seed), and records the indices it was called with."""

    name = "seeded_noise"
    seeded = True

    def __init__(self, scale: float = 0.05) -> None:
        self.scale, self.calls = scale, []

    def purify(self, images, classifier, indices, labels=None):
        self.calls.append(indices.tolist())
        noise = torch.stack([torch.randn(images[0].shape, generator=torch.Generator().manual_seed(int(i) % 2**63))
                             for i in indices])  # fmt: skip
        return (images + self.scale * noise).clamp(0, 1)


class Halver(Purifier):
    """A differentiable purifier with a known Jacobian: x -> x / 2."""

    name = "halver"
    differentiable = True

    def purify(self, images, classifier, indices, labels=None):
        return images / 2

    def purify_with_grad(self, images):
        return images / 2


def test_bpda_pgd_on_the_undefended_victim_is_torchattacks_pgd():
    victim, x, y = tiny_victim_module(), torch.rand(6, 3, 32, 32), torch.arange(6)
    torch.manual_seed(3)
    ours = build_attack("bpda_pgd", eps=8 / 255, steps=7, select="last")(victim, x, y)
    torch.manual_seed(3)
    theirs = build_attack("pgd", eps=8 / 255, steps=7)(victim, x, y)
    assert torch.equal(ours, theirs)
    torch.manual_seed(3)
    defended = DefendedClassifier(victim, IdentityDefense())
    assert torch.equal(build_attack("bpda_pgd", eps=8 / 255, steps=7, select="last")(defended, x, y), theirs)


def test_bpda_backward_is_the_victims_gradient_at_the_purified_image():
    victim = tiny_victim_module()
    defense = SeededNoise()
    defended = DefendedClassifier(victim, defense)
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    with defended.bound_to(torch.tensor([5, 6, 7])):
        xg = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(defended(xg), y).backward()
        purified = defense.purify(x, victim, torch.tensor([5, 6, 7]))
    pg = purified.clone().requires_grad_(True)
    nn.functional.cross_entropy(victim(pg), y).backward()
    assert torch.allclose(xg.grad, pg.grad) and defended.gradient == "bpda-identity"
    with pytest.raises(UserError, match="no gradient of its own"):
        DefendedClassifier(victim, defense, bpda=False)(x.clone().requires_grad_(True))


def test_differentiable_defense_gets_its_full_gradient():
    victim = tiny_victim_module()
    defended = DefendedClassifier(victim, Halver())
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(defended(xg), y).backward()
    half = (x / 2).requires_grad_(True)
    nn.functional.cross_entropy(victim(half), y).backward()
    assert torch.allclose(xg.grad, half.grad / 2) and defended.gradient == "full"


def test_seed_policy_bound_indices_hashes_and_draws():
    victim, defense = tiny_victim_module(), SeededNoise()
    defended = DefendedClassifier(victim, defense)
    x = torch.rand(4, 3, 32, 32)
    # unbound: an image's output depends on its bytes only, not on the batch it is in
    alone = defended.purified(x[2:3])
    together = defended.purified(x)
    assert torch.equal(alone[0], together[2])
    hashed = hashed_indices(x)
    assert (hashed >= HASHED_INDEX_BASE).all() and (hashed < 2 * HASHED_INDEX_BASE).all()
    assert torch.equal(hashed, hashed_indices(x.clone())) and len(set(hashed.tolist())) == 4
    with defended.bound_to(torch.tensor([10, 11, 12, 13])):
        defended(x)
        assert defense.calls[-1] == [10, 11, 12, 13]
        with defended.restricted_to(torch.tensor([False, True, False, True])):
            defended(x[[1, 3]])
            assert defense.calls[-1] == [11, 13]
        with pytest.raises(ValueError, match="bound to 4 dataset indices but was called on 2"):
            defended(x[:2])
    assert draw_indices(torch.tensor([3]), 2).item() == 3 + 2 * DRAW_STRIDE
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        defended(x * 2)
    # an unseeded defense ignores the index, so a bound batch may be queried in part (AutoAttack
    # sends only the images its first attack left unbroken to the next)
    halved = DefendedClassifier(victim, Halver())
    with halved.bound_to(torch.tensor([10, 11, 12, 13])):
        assert torch.equal(halved(x[:3]), victim(x[:3] / 2))


def test_apgd_through_a_seeded_defense_restarts_on_the_unbroken_rows_with_their_own_seeds():
    """torchattacks' APGD attacks the subset a first forward left right; bound to a seeded
    defense, each query must carry those images' indices (issue 39: APGD through DIP)."""
    victim, defense = MeanThreshold(), SeededNoise(scale=0.01)
    defended = DefendedClassifier(victim, defense)
    x = torch.stack([torch.full((3, 8, 8), v) for v in (0.2, 0.52, 0.8, 0.49)])  # 0.2 is wrongly labelled
    y = torch.tensor([1, 1, 1, 0])
    attack = build_attack("apgd", eps=8 / 255, steps=4, n_restarts=2)
    assert type(attack).uses_bpda
    with defended.bound_to(torch.tensor([20, 21, 22, 23])):
        adversarial = attack(defended, x, y)
    assert defense.calls[0] == [20, 21, 22, 23]  # the first forward: the whole batch
    assert {tuple(c) for c in defense.calls[1:]} <= {(21, 22, 23), (22,)}  # restarts: the rows still right
    assert (adversarial - x).abs().max() <= 8 / 255 + 1e-6
    assert defended(adversarial).argmax(1).tolist()[1] == 0 and defended(adversarial).argmax(1).tolist()[3] == 1


@pytest.mark.parametrize("bound", [False, True])
def test_apgd_start_of_an_image_does_not_depend_on_its_chunk_mates(bound):
    """torchattacks' APGD draws the start of the images still right (a subset of the batch) from the
    global generator, so an image's start, and its verdict, changed with a wrongly classified
    chunk-mate (issue 39: two runs of APGD-100 through dip_inc disagreed on 2 of 5 images)."""
    from dipdefense.common.per_image_rng import attack_seed, per_image_draws

    defended = DefendedClassifier(tiny_victim_module(), SeededNoise(scale=0.01))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), defended.bound_to(torch.tensor([30, 31, 32])):
        predicted = defended(x).argmax(1)
    y = predicted.clone()
    y[0] = (predicted[0] + 1) % 10  # image 30 is wrong from the start, so APGD attacks rows 1 and 2

    def attacked(rows: list[int]) -> torch.Tensor:
        attack = build_attack("apgd", eps=8 / 255, steps=3)
        indices = torch.tensor([30 + r for r in rows])
        binding = defended.bound_to(indices) if bound else contextlib.nullcontext()
        with per_image_draws([attack_seed(0, int(i)) for i in indices]) as draws, binding:
            adversarial = attack(defended if bound else defended.victim, x[rows], y[rows])
        assert draws.shared_draws == 0
        return adversarial

    beside_a_wrong_one, alone = attacked([0, 1, 2]), attacked([1, 2])
    assert torch.equal(beside_a_wrong_one[1:], alone)
    assert torch.equal(beside_a_wrong_one[0], x[0])  # left as it was
    assert not torch.equal(alone, x[1:])


def test_eot_averages_other_draws_and_judges_with_the_evaluations_own():
    victim, defense = tiny_victim_module(), SeededNoise()
    defended = DefendedClassifier(victim, defense)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    attack = build_attack("eot_pgd", eps=8 / 255, steps=2, eot=3)
    with defended.bound_to(torch.tensor([4, 9])):
        attack(defended, x, y)
    own = [c for c in defense.calls if c == [4, 9]]
    draws = [c for c in defense.calls if len(c) == 6]
    assert len(own) == 3  # one verdict per iterate (0, 1, 2), with the evaluation's seeds
    assert len(draws) == 2  # one batched gradient call of 3 draws x 2 images per step
    assert sorted(draws[0]) == sorted(int(draw_indices(torch.tensor([i]), d)) for d in (1, 2, 3) for i in (4, 9))
    assert attack.last_history.shape == (2, 3)


def test_unbounded_bpda_pgd_breaks_a_real_dip_defense():
    victim = tiny_victim_module()
    # 60 steps at lr 0.05 fit the image well enough that the output follows the input (MSE ~0.05)
    defense = build_defense("dip_inc", network="small", iterations=60, lr=0.05, threshold=0.0, dip_batch=8)
    defended = DefendedClassifier(victim, defense)
    x = torch.rand(4, 3, 32, 32)
    indices = torch.arange(4)
    with torch.no_grad(), defended.bound_to(indices):
        y = defended(x).argmax(1)  # labels the defended victim gets right
    attack = build_attack("bpda_pgd", eps=1.0, steps=6)
    with defended.bound_to(indices):
        adv = attack(defended, x, y)
        with torch.no_grad():
            fooled = defended(adv).argmax(1) != y
    history = attack.last_history
    assert history.shape == (4, 7) and history[:, 0].all()  # the random start fools none here
    assert fooled.all(), f"unbounded BPDA left {int((~fooled).sum())} of 4 right"
    assert not history.all(dim=1).any()  # each image has an iterate that fooled, and it was kept


def test_random_noise_counts_an_image_broken_if_any_try_fools():
    class Threshold(nn.Module):  # class 1 iff the mean pixel is above 0.5
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], dim=1) * 100

    x = torch.full((3, 1, 4, 4), 0.5)
    x[0] += 0.2  # far from the boundary: noise of 0.01 never flips it
    x[1] += 0.0005  # on it: some draws flip it
    x[2] -= 0.2
    y = torch.tensor([1, 1, 0])
    torch.manual_seed(0)
    attack = build_attack("random_noise", eps=0.01, tries=20)
    adv = attack(Threshold(), x, y)
    history = attack.last_history
    assert history[0].all() and history[2].all() and not history[1].all()
    assert Threshold()(adv).argmax(1).tolist() == [1, 0, 0]  # the fooling try is kept
    assert (adv - x).abs().max() <= 0.01 + 1e-7


def test_inc_rejection_term_has_the_envelope_gradient():
    class FakeINC(Purifier):
        name, seeded, eta = "fake_inc", True, 0.5

        def purify(self, images, classifier, indices, labels=None):
            return torch.zeros_like(images)

    defended = DefendedClassifier(tiny_victim_module(), FakeINC())
    x = torch.rand(2, 3, 32, 32).requires_grad_(True)
    purified = defended.purified(x, torch.arange(2))
    penalty = defended.evasion_penalty(x, purified)
    penalty.sum().backward()
    distance = x.detach().flatten(1).norm(dim=1)
    assert torch.allclose(penalty, distance / 0.5 - 1)
    assert torch.allclose(x.grad, x.detach() / distance.view(-1, 1, 1, 1) / 0.5)


class MeanThreshold(nn.Module):
    """Class 1 iff the mean pixel is above 0.5."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 100


class BrightnessDetector(Detector):
    """Flags images whose mean pixel is above ``level``; differentiable."""

    name, threshold = "bright", 0.5

    def __init__(self, level: float) -> None:
        self.level = level

    def logit(self, images):
        return (images.mean(dim=(1, 2, 3)) - self.level) * 400

    def score(self, images):
        return self.logit(images).sigmoid()


def test_bpda_against_a_lone_detector_counts_flagged_inputs_as_defended():
    x, y = torch.full((3, 1, 4, 4), 0.49), torch.zeros(3, dtype=torch.long)
    # every input the victim calls class 1 is flagged: fooling the victim is never a success
    defended = DefendedClassifier(MeanThreshold(), BrightnessDetector(level=0.5))
    attack = build_attack("bpda_pgd", eps=0.05, steps=8, random_start=False, evasion_weight=0.0)
    adv = attack(defended, x, y)
    assert attack.last_history.all()  # the victim was fooled from iterate 1 on, always seen
    assert (MeanThreshold()(adv).argmax(1) == 1).all()
    # the evasion term: softplus of the logit past the threshold, pushing the detector down
    detector = BrightnessDetector(level=0.52)
    defended = DefendedClassifier(MeanThreshold(), detector)
    xg = torch.full((1, 1, 4, 4), 0.53).requires_grad_(True)
    penalty = defended.evasion_penalty(xg, defended.purified(xg))
    assert torch.allclose(penalty, nn.functional.softplus(detector.logit(xg.detach())))
    penalty.sum().backward()
    assert (xg.grad > 0).all()  # descending the loss (CE - penalty) lowers the brightness


class ProjectToConstant(Purifier):
    """A toy INC: projects onto the constant images (the mean pixel everywhere) and refuses an
    input farther than ``eta`` from its projection."""

    name, eta = "project_to_constant", 0.5

    def purify_detailed(self, images, classifier, indices, labels=None):
        projected = images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images).clone()
        distance = (images - projected).flatten(1).norm(dim=1)
        return Purified(projected, [{"rejected": bool(d > self.eta)} for d in distance], {})


class FirstPixel(nn.Module):
    """Class 1 iff the first pixel is above 0.5: its gradient is off the constant images."""

    def forward(self, x):
        p = x[:, 0, 0, 0]
        return torch.stack([0.5 - p, p - 0.5], dim=1) * 100


def test_unbounded_bpda_on_the_defenses_range_breaks_a_projecting_rejecting_defense():
    x, y = torch.full((2, 1, 4, 4), 0.3), torch.zeros(2, dtype=torch.long)
    defended = DefendedClassifier(FirstPixel(), ProjectToConstant())
    # Sign steps of the victim's loss move the first pixel alone: at most 0.7 / 16 onto the mean.
    sign = build_attack("bpda_pgd", eps=1.0, steps=30, random_start=False, evasion_weight=0.0)
    sign(defended, x, y)
    assert sign.last_history.all()
    # From the projection, an L2 step of 0.4 stays within eta and moves the mean 0.4 / 16: iterate
    # k has mean 0.3 + 0.025 k, and the first past 0.5 is iterate 9 (iterate 8 is the tie, class 0).
    on_range = build_attack("bpda_pgd", eps=1.0, steps=30, random_start=False, step="l2", alpha=0.4, on_range=True)
    adv = on_range(defended, x, y)
    fooled_at = (~on_range.last_history).float().argmax(1)
    assert fooled_at.tolist() == [9, 9]
    with torch.no_grad():
        assert (defended(adv).argmax(1) == 1).all() and not defended.last_rejected.any()
    with pytest.raises(AttackError, match="step is 'sign' or 'l2'"):
        build_attack("bpda_pgd", eps=1.0, step="l1")
    with pytest.raises(AttackError, match="needs eot=0"):
        build_attack("bpda_pgd", eps=1.0, eot=2, on_range=True)


class ConstantGenerator(ProjectToConstant):
    """ProjectToConstant with its generator exposed: G(z) is the constant image z (k = 1)."""

    def generator(self, z):
        return z.view(-1, 1, 1, 1).expand(-1, 1, 4, 4)

    def project(self, images, indices):
        from dipdefense.manifold.inversion import Inversion

        z = images.mean(dim=(1, 2, 3)).view(-1, 1)
        reconstruction = self.generator(z)
        return Inversion(z, reconstruction, (images - reconstruction).flatten(1).norm(dim=1))


def test_latent_space_attack_walks_the_generators_range_and_is_never_refused():
    x, y = torch.full((2, 1, 4, 4), 0.3), torch.zeros(2, dtype=torch.long)
    defended = DefendedClassifier(FirstPixel(), ConstantGenerator())
    # margin loss 200 (0.5 - z) down to -kappa: Adam (lr 0.05) takes z from 0.3 past 0.5 within 10 steps
    attack = build_attack("latent_space", eps=1.0, steps=30, lr=0.05, check_every=10)
    adv = attack(defended, x, y)
    assert attack.last_history.tolist() == [[True, False, False, False]] * 2
    assert torch.allclose(adv, adv[:, :, :1, :1].expand_as(adv))  # a constant image: on the range
    with torch.no_grad():
        assert (defended(adv).argmax(1) == 1).all() and not defended.last_rejected.any()
    with pytest.raises(AttackError, match="unbounded attack"):
        build_attack("latent_space", eps=8 / 255)
    with pytest.raises(AttackError, match="does not project onto a generator"):
        build_attack("latent_space", eps=1.0)(DefendedClassifier(FirstPixel(), Halver()), x, y)
    with pytest.raises(UserError, match="needs a defense that projects onto one"):
        check_against_defense(expand_attacks("latent_space", [1.0]), build_defense("autoencoder"))


def test_threat_models_and_the_pairs_that_cannot_run():
    runs = expand_attacks("clean,pgd,pgd(threat=adaptive),bpda_pgd,hopskipjump(queries=200)", [8 / 255])
    assert [(r.id, r.threat) for r in runs] == [
        ("clean", "oblivious"),
        ("pgd@8/255", "oblivious"),
        ("pgd(threat=adaptive)@8/255", "adaptive"),
        ("bpda_pgd@8/255", "adaptive"),
        ("hopskipjump(queries=200)", "oblivious"),
    ]
    assert "threat" not in runs[2].params
    adaptive = expand_attacks("hopskipjump(queries=200)", [], threat_model="adaptive")
    assert adaptive[0].id == "hopskipjump(queries=200,threat=adaptive)" and adaptive[0].threat == "adaptive"
    with pytest.raises(UserError, match="no oblivious form"):
        expand_attacks("bpda_pgd(threat=oblivious)", [8 / 255])
    with pytest.raises(UserError, match="threat='sideways'"):
        expand_attacks("pgd(threat=sideways)", [8 / 255])
    dip = build_defense("dip_inc", network="small", iterations=5)
    with pytest.raises(UserError, match=r"pgd\(threat=adaptive\)@8/255 vs defense 'dip_inc'.*bpda_pgd"):
        check_against_defense(runs, dip)
    check_against_defense([runs[3], adaptive[0]], dip)  # BPDA and decision-based attacks run
    check_against_defense(runs, IdentityDefense())
    oracle = build_defense("deep_protection", network="small", iterations=5, oracle=True)
    with pytest.raises(UserError, match="oracle"):
        check_against_defense([runs[3]], oracle)
    with pytest.raises(UserError, match="oracle"):
        DefendedClassifier(tiny_victim_module(), oracle)


def test_decision_oracle_asks_a_seeded_defense_each_row_with_its_own_index():
    from dipdefense.attacks.hopskipjump import DecisionOracle

    defense = SeededNoise(scale=0.5)  # enough noise that the index decides the label
    defended = DefendedClassifier(MeanThreshold(), defense)
    x, indices = torch.full((3, 3, 4, 4), 0.5), torch.tensor([20, 22, 23])  # 23's noise is bright, 20's dark
    first, second = (0.5 + 0.01 * torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(n)) for n in (3, 2))
    with defended.bound_to(indices):
        oracle = DecisionOracle(defended, x, torch.zeros(3, dtype=torch.long), "linf", budget=5)
        oracle(first)
        with oracle.on_rows(torch.tensor([2, 0])):
            answers = oracle(second).argmax(1).tolist()  # new inputs for rows 2 and 0, in that order
    assert defense.calls[-1] == [23, 20]

    def label(image: torch.Tensor, index: int) -> int:
        with defended.bound_to(torch.tensor([index])), torch.no_grad():
            return defended(image[None]).argmax(1).item()

    assert answers == [label(second[0], 23), label(second[1], 20)] == [1, 0]


def test_hopskipjump_through_a_seeded_defense_seeds_every_query_by_its_own_image():
    victim, defense = MeanThreshold(), SeededNoise(scale=0.01)
    defended = DefendedClassifier(victim, defense)
    x = 0.3 + 0.1 * torch.rand(3, 3, 8, 8)  # class 0; uniform noise is class 1 half the time
    indices = torch.tensor([20, 21, 22])
    with torch.no_grad(), defended.bound_to(indices):
        y = defended(x).argmax(1)
    attack = build_attack("hopskipjump", queries=200, constraint="linf")
    with defended.bound_to(indices):
        adv = attack(defended, x, y)
        with torch.no_grad():
            fooled = defended(adv).argmax(1) != y
    assert fooled.all() and len(defense.calls) > 100
    # the oracle asks only the images with a new input: the binding narrows to them, row for row
    assert all(set(c) <= {20, 21, 22} for c in defense.calls) and any(len(c) < 3 for c in defense.calls)


def _run(out, victim, data_dir, *extra):
    args = ["--victim", str(victim), "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "4", *extra]
    return evaluate.main(args)


def test_evaluate_reports_both_threat_models_curves_worst_case_and_sanity(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "adaptive"
    attacks = "clean,pgd(steps=5),bpda_pgd(steps=5),random_noise(tries=6),hopskipjump(queries=200,constraint=linf,threat=adaptive)"
    args = ("--attacks", attacks, "--eps", "8,255", "--num-samples", "8")
    rows = _run(out, tiny_victim, cifar_batches_dir, *args)
    by_id = {(r["attack"], r["eps"]): r for r in rows}
    assert by_id[("pgd", 8 / 255)]["threat_model"] == "oblivious"
    bpda = by_id[("bpda_pgd", 8 / 255)]
    assert bpda["threat_model"] == "adaptive" and bpda["gradient"] == "full"
    assert len(bpda["any_iterate_curve"]) == 6 and bpda["any_iterate_curve"][-1] == pytest.approx(bpda["accuracy"])
    assert all(a >= b for a, b in zip(bpda["any_iterate_curve"], bpda["any_iterate_curve"][1:], strict=False))
    assert by_id[("bpda_pgd", 1.0)]["accuracy"] == 0.0  # unbounded
    hsj = by_id[("hopskipjump", None)]
    assert hsj["budget_norm"] == "linf" and hsj["budget_curve"][0][1] >= hsj["budget_curve"][-1][1]
    # the tiny victim gets every image wrong: each is adversarial as it is, for one query
    assert hsj["queries_max"] == 1 and hsj["revision"] == HopSkipJump.revision and hsj["budget_curve"][0][1] == 0.0
    assert hsj["start_queries_median"] == 1 and "median 1 of them finding a start" in (out / "results.md").read_text()
    assert hsj["rescore_disagreements"] == 0  # scored by the oracle's answers, which the re-run confirms
    assert hsj["unattacked"] == 0 and "never attacked" not in (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    worst = {(w["eps"], w["threat_model"]): w for w in results["worst_case"]}
    at8 = [by_id[(n, 8 / 255)]["accuracy"] for n in ("pgd", "bpda_pgd", "random_noise")]
    assert worst[(8 / 255, "all")]["accuracy"] <= min(at8)
    checks = {c["check"]: c["verdict"] for c in results["sanity_checks"]}
    assert checks["unbounded bpda_pgd(steps=5)@255 reaches ~0%"] == "pass"
    assert checks["bpda_pgd(steps=5)@8 on the undefended victim matches pgd(steps=5)@8"] == "pass"
    md = (out / "results.md").read_text()
    assert "oblivious attacks (crafted on the bare victim" in md and "adaptive attacks (crafted through" in md
    assert "Sanity checks" in md and "Robust accuracy" in md and "paper 002 Fig. 4" in md
    assert (out / "accuracy_vs_iteration.png").is_file() and (out / "accuracy_vs_budget.png").is_file()
    records = read_records(out / "samples.jsonl")
    assert all(len(r["history"]) == 6 for r in records if r["attack"] == "bpda_pgd@8/255")
    # a rerun resumes: nothing recomputed, the same figures
    again = _run(out, tiny_victim, cifar_batches_dir, *args)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert len(read_records(out / "samples.jsonl")) == len(records)


def test_a_new_adaptive_attack_revision_never_reuses_cached_adversarials(
    tiny_victim, cifar_batches_dir, tmp_path, monkeypatch
):
    # evaluate.py passes its own adaptive cache key; the revision must reach it too, or a fixed
    # attack (or defense gradient) reads back what the broken one cached.
    import lightning_modules.robustness_eval as robustness_eval

    cache = Path(os.environ["DIPDEF_CACHE"]) / "adversarial"
    args = ("--attacks", "bpda_pgd(steps=2)", "--eps", "8", "--num-samples", "4")
    _run(tmp_path / "first", tiny_victim, cifar_batches_dir, *args)
    before = set(cache.rglob("bpda_pgd/*.pt"))
    _run(tmp_path / "same", tiny_victim, cifar_batches_dir, *args)
    assert set(cache.rglob("bpda_pgd/*.pt")) == before  # same revision: a cache hit
    monkeypatch.setattr(robustness_eval, "ADAPTIVE_REVISION", robustness_eval.ADAPTIVE_REVISION + 1)
    _run(tmp_path / "revised", tiny_victim, cifar_batches_dir, *args)
    assert len(set(cache.rglob("bpda_pgd/*.pt")) - before) == 1


def test_evaluate_refuses_a_gradient_attack_through_a_dip_defense_before_writing(
    tiny_victim, cifar_batches_dir, tmp_path
):
    out = tmp_path / "refused"
    with pytest.raises(UserError, match=r"autoattack\(threat=adaptive\)@8/255 vs defense 'dip_stitch'"):
        _run(out, tiny_victim, cifar_batches_dir, "--defense", "dip_stitch", "--attacks", "autoattack(threat=adaptive)")
    assert not out.exists()


def test_gated_defense_purifies_only_flagged_inputs_with_their_gradient():
    from dipdefense.defenses.gated import DetectorGatedPurifier

    gated = DetectorGatedPurifier(BrightnessDetector(level=0.5), Halver())
    defended = DefendedClassifier(MeanThreshold(), gated)
    x = torch.stack([torch.full((1, 4, 4), 0.3), torch.full((1, 4, 4), 0.8)]).requires_grad_(True)
    purified = defended.purified(x)
    assert torch.allclose(purified[0], x[0]) and torch.allclose(purified[1], x[1] / 2)
    purified.sum().backward()
    assert torch.allclose(x.grad[0], torch.ones(1, 4, 4)) and torch.allclose(x.grad[1], torch.full((1, 4, 4), 0.5))
    assert defended.gradient == "full" and defended.last_rejected is None  # gated inputs are purified, not refused


def test_library_attacks_run_on_the_defended_model_as_in_the_readme():
    import foolbox as fb
    import torchattacks

    victim, defense = tiny_victim_module(), SeededNoise()
    defended = DefendedClassifier(victim, defense)
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with defended.bound_to(torch.tensor([7, 8, 9])):
        adv = torchattacks.PGD(defended, eps=8 / 255, alpha=2 / 255, steps=3)(x, y)
        _, clipped, _ = fb.attacks.LinfPGD(steps=3)(
            fb.PyTorchModel(defended.eval(), bounds=(0, 1)), x, y, epsilons=8 / 255
        )
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and (clipped - x).abs().max() <= 8 / 255 + 1e-6
    assert all(c == [7, 8, 9] for c in defense.calls)


def test_arts_hopskipjump_runs_on_the_defended_model_one_image_at_a_time():
    """Paper 002's HSJ implementation: ART batches one image's queries; bound to that image's
    index, every query batch reaches the defense whole and seeded as the evaluation seeds it."""
    import numpy as np
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    defense = SeededNoise(scale=0.01)
    defended = DefendedClassifier(MeanThreshold(), defense).eval()
    x = 0.3 + 0.1 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    classifier = PyTorchClassifier(
        defended, loss=nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=2, clip_values=(0, 1),
        device_type="cpu",
    )  # fmt: skip
    with defended.bound_to(torch.tensor([31])):
        attack = HopSkipJump(classifier, norm=np.inf, max_iter=2, max_eval=100, init_eval=20, verbose=False)
        adv = torch.from_numpy(attack.generate(x.numpy()))
        assert defended(adv).argmax(1).item() == 1
    assert max(len(c) for c in defense.calls) >= 20  # a gradient estimate: one batch of queries
    assert {i for c in defense.calls for i in c} == {31}


def test_worst_case_counts_a_refused_attacked_input_as_defended():
    runs = expand_attacks("pgd,bpda_pgd", [8 / 255], {}, "oblivious")
    base = {"label": 0, "linf": 8 / 255}
    records = [
        {**base, "index": 0, "attack": "pgd@8/255", "pred": 0},
        {**base, "index": 0, "attack": "bpda_pgd@8/255", "pred": 3, "rejected": True},  # fooled, but refused
        {**base, "index": 1, "attack": "pgd@8/255", "pred": 0},
        {**base, "index": 1, "attack": "bpda_pgd@8/255", "pred": 3, "rejected": False},  # fooled and let through
    ]
    worst = {w["threat_model"]: w for w in worst_case_rows(records, runs)}
    assert worst["adaptive"]["accuracy"] == 0.5 and worst["all"]["accuracy"] == 0.5


def test_sanity_checks_judge_a_rejecting_defense_with_rejection():
    from dipdefense.evaluation.rows import sanity_checks

    # INC refused what the unbounded attack made (the victim alone is fooled on 96%): not ~0% for the system
    row = {
        "attack": "bpda_pgd", "variant": "random_start=false", "eps": 1.0, "threat_model": "adaptive",
        "accuracy": 0.04, "accuracy_with_rejection": 0.77,
    }  # fmt: skip
    (check,) = [c for c in sanity_checks([row], "inc") if c["check"].startswith("unbounded")]
    assert check["verdict"].startswith("FAIL") and check["figures"] == "77.0% with rejection"
    (check,) = [
        c
        for c in sanity_checks([{**row, "accuracy": 0.01, "accuracy_with_rejection": None}], "none")
        if "unbounded" in c["check"]
    ]
    assert check["verdict"] == "pass" and check["figures"] == "1.0%"


def test_noise_baseline_is_paired_only_with_as_many_tries_as_the_attack_has_iterates():
    from dipdefense.evaluation.rows import sanity_checks

    def row(attack: str, iterates: int, accuracy: float) -> dict:
        curve = [accuracy] * iterates
        return {"attack": attack, "eps": 8 / 255, "threat_model": "adaptive", "accuracy": accuracy,
                "iterate_curve": curve, "any_iterate_curve": curve}  # fmt: skip

    checks = sanity_checks([row("bpda_pgd", 16, 0.2), row("random_noise", 16, 0.5)], "dip_stitch")
    (noise,) = [c for c in checks if "random noise" in c["check"]]
    assert noise["verdict"] == "pass" and "16 tries" in noise["check"]
    checks = sanity_checks([row("bpda_pgd", 41, 0.2), row("random_noise", 16, 0.5)], "dip_stitch")
    (noise,) = [c for c in checks if "random noise" in c["check"]]
    assert noise["verdict"] == "not checked: run random_noise(tries=41)" and "16 tries" in noise["figures"]


def test_unbound_attacks_judge_each_iterate_as_a_later_defended_call_will():
    # no dataset indices (a notebook): an iterate is seeded by its own bytes, so the verdict the
    # attack reached on the image it returns is what defended(adv) answers afterwards
    victim, defense = MeanThreshold(), SeededNoise(scale=0.2)
    defended = DefendedClassifier(victim, defense)
    torch.manual_seed(0)
    x = 0.47 + 0.02 * torch.rand(16, 3, 8, 8)  # class 0, near the boundary: the noise draw decides
    y = torch.zeros(16, dtype=torch.long)
    for name, params in (("bpda_pgd", {"steps": 4}), ("random_noise", {"tries": 5})):
        attack = build_attack(name, eps=0.01, **params)
        adv = attack(defended, x, y)
        broken = ~attack.last_history.all(dim=1)
        with torch.no_grad():
            fooled = defended(adv).argmax(1) != y
        assert broken.any() and torch.equal(fooled, broken), name


def overfit_tiny_victim(data_dir: Path, path: Path) -> Path:
    """The tiny victim fitted to the test split of ``cifar_batches_dir``: right on its images and
    answering several classes (the untrained one answers class 1 to everything)."""
    from dipdefense.common.checkpoint_io import save_checkpoint
    from dipdefense.nets import build_classifier

    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f)
    x = torch.tensor(batch["data"]).view(-1, 3, 32, 32).float() / 255
    y = torch.tensor(batch["labels"])
    torch.manual_seed(0)
    model = build_classifier(**TINY_VICTIM_CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    save_checkpoint(path, "victim", TINY_VICTIM_CONFIG, model.state_dict())
    return path


def test_hopskipjump_is_scored_by_its_oracles_answers_and_counts_where_a_rerun_disagrees(
    tiny_victim, cifar_batches_dir, tmp_path, monkeypatch
):
    from dipdefense.attacks.hopskipjump import HopSkipJump

    # The tiny victim gets every image wrong, so HSJ returns each as it is, answered wrong.
    # Stand in for an end point the oracle answered right and a re-run rounds to wrong (the
    # boundary case): the record takes the oracle's answer and keeps the re-run's.
    call = HopSkipJump.__call__

    def told_right(self, model, images, labels):
        adversarial = call(self, model, images, labels)
        self.last_answers = labels.detach().cpu().clone()
        self.last_answers[0] = -1  # as for an end point clipped to eps: never asked, so re-run
        return adversarial

    monkeypatch.setattr(HopSkipJump, "__call__", told_right)
    out = tmp_path / "oracle"
    attack = "hopskipjump(queries=50,constraint=linf,threat=adaptive)"
    rows = _run(out, tiny_victim, cifar_batches_dir, "--attacks", attack, "--num-samples", "4")
    (hsj,) = [r for r in rows if r["attack"] == "hopskipjump"]
    records = read_records(out / "samples.jsonl")
    told = [r for r in records if "rescored_pred" in r]
    assert len(told) == 3 and all(r["pred"] == r["label"] != r["rescored_pred"] for r in told)
    assert hsj["accuracy"] == 0.75 and hsj["rescore_disagreements"] == 3 and hsj["oracle_scored"] == 3
    assert hsj["unattacked"] == 3  # right as they are, unmoved: what an image without a start looks like
    text = "scored by the oracle's answers on 3 (the rest by a re-run), which a re-run of the defense contradicts on 3"
    assert text in (out / "results.md").read_text()


def test_a_query_budget_family_runs_once_and_matches_separate_runs(cifar_batches_dir, tmp_path, monkeypatch):
    victim = overfit_tiny_victim(cifar_batches_dir, tmp_path / "overfit.ckpt")

    def hsj(queries: int) -> str:
        return f"hopskipjump(queries={queries},constraint=linf,threat=adaptive)"

    def records(out, attacks: str, cache: str) -> dict:
        monkeypatch.setenv("DIPDEF_CACHE", str(tmp_path / cache))
        _run(out, victim, cifar_batches_dir, "--attacks", attacks, "--num-samples", "6")
        return {(r["attack"], r["index"]): r for r in read_records(out / "samples.jsonl")}

    from dipdefense.attacks.hopskipjump import HopSkipJump

    runs, run = [], HopSkipJump._run
    monkeypatch.setattr(HopSkipJump, "_run", lambda self, *a: runs.append(self.queries) or run(self, *a))
    family = records(tmp_path / "family", f"clean,{hsj(60)},{hsj(250)}", "cache_family")
    assert runs == [250, 250]  # one attack per chunk (2 chunks of 4), at the largest budget
    alone = records(tmp_path / "alone", hsj(60), "cache_alone")
    # The plumbing (that the snapshots equal runs of their own image for image is test_attacks'):
    # one attack of the largest budget pays for both rows, and the smaller row is what a run of
    # its own gives.
    assert len(list((tmp_path / "cache_family").rglob("*.pt"))) == 2 * 2  # 2 chunks x 2 budgets
    for (attack, index), r in alone.items():
        twin = family[(attack, index)]
        assert (twin["linf"], twin["pred"], twin["queries"]) == (r["linf"], r["pred"], r["queries"])
        assert twin["start_queries"] == r["start_queries"] <= r["queries"]  # what of it found the start
    assert sum(r["pred"] == r["label"] for (a, _), r in family.items() if a == "clean") >= 4
    assert max(r["queries"] for (a, _), r in family.items() if a == hsj(250)) == 250
