"""Per-image attack draws: an image's adversarial example does not depend on the chunk it is in."""

import pytest
import torch
from torch import nn

from dipdefense.common.per_image_rng import attack_seed, global_draws, per_image_draws, restricted_rows
from dipdefense.defenses import DefendedClassifier
from dipdefense.defenses.base import Purifier

DRAWS = {
    "uniform_": lambda b: torch.empty(b, 3, 4).uniform_(-1, 1),
    "normal_": lambda b: torch.empty(b, 5).normal_(0, 2),
    "bernoulli_": lambda b: torch.empty(b, 16).bernoulli_(0.3),
    "random_": lambda b: torch.empty(b, 6, dtype=torch.long).random_(0, 9),
    "exponential_": lambda b: torch.empty(b, 2).exponential_(),
    "rand": lambda b: torch.rand(b, 3),
    "rand(size)": lambda b: torch.rand((b, 3), dtype=torch.float64),
    "randn": lambda b: torch.randn(b, 2, 2),
    "randint(high, size)": lambda b: torch.randint(7, (b, 4)),
    "randint(low, high, size)": lambda b: torch.randint(3, 7, (b, 4)),
    "randint(low=, high=)": lambda b: torch.randint(low=-2, high=2, size=(b, 4)),
    "rand_like": lambda b: torch.rand_like(torch.zeros(b, 3)),
    "randn_like": lambda b: torch.randn_like(torch.zeros(b, 3, dtype=torch.float64)),
    "randint_like(high)": lambda b: torch.randint_like(torch.zeros(b, 16), 2),
    "randint_like(low, high)": lambda b: torch.randint_like(torch.zeros(b, 3), 5, 9),
}


@pytest.mark.parametrize("name", list(DRAWS))
def test_each_row_comes_from_its_own_seed_whatever_the_batch(name):
    draw = DRAWS[name]
    torch.manual_seed(0)
    with per_image_draws([10, 11, 12, 13]) as mode:
        whole = draw(4)
    torch.manual_seed(1)  # another global state: it must not matter
    with per_image_draws([12, 13]):
        part = draw(2)
    with per_image_draws([13]):
        alone = draw(1)
    assert torch.equal(whole[2:], part) and torch.equal(whole[3:], alone)
    assert mode.per_image_draws == 1 and mode.shared_draws == 0
    assert not torch.equal(whole[0], whole[1])  # different seeds, different rows
    lo, hi = {"randint(low, high, size)": (3, 6), "randint(low=, high=)": (-2, 1)}.get(name, (None, None))
    if lo is not None:  # the bounds were read right
        assert whole.min() >= lo and whole.max() <= hi and whole.dtype == torch.long


def test_draws_that_are_not_per_image_fall_back_to_the_global_generator_and_are_counted():
    torch.manual_seed(5)
    expected = torch.rand(3), torch.randperm(4)
    torch.manual_seed(5)
    with per_image_draws([1, 2, 3, 4]) as mode:
        got = torch.rand(3), torch.randperm(4)  # 3 rows for 4 images; a permutation
        explicit = torch.rand(4, 2, generator=torch.Generator().manual_seed(9))
        scalar = torch.empty(()).uniform_()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(explicit, torch.rand(4, 2, generator=torch.Generator().manual_seed(9)))  # left alone
    assert scalar.shape == () and mode.shared_draws == 3 and mode.per_image_draws == 0


def test_restricted_rows_draw_for_those_images_from_their_own_generators():
    with per_image_draws([10, 11, 12, 13]) as mode:
        first = torch.rand(4, 3)
        second = torch.rand(4, 3)
    with per_image_draws([10, 11, 12, 13]) as mode:
        torch.rand(4, 3)
        with restricted_rows(torch.tensor([False, True, False, True])):
            part = torch.rand(2, 3)  # images 11 and 13, their second draw
        with restricted_rows(torch.tensor([2])):
            alone = torch.rand(1, 3)
        after = torch.rand(4, 3)
    assert torch.equal(part, second[[1, 3]]) and torch.equal(alone, second[2:3])
    assert mode.shared_draws == 0 and mode.seeds == [10, 11, 12, 13]  # restored after the block
    assert torch.equal(after[0], second[0]) and not torch.equal(after[1], second[1])  # each state kept
    assert not torch.equal(first, second)
    with restricted_rows(torch.tensor([0])):  # no mode: a no-op
        assert torch.rand(3, 2).shape == (3, 2)


def test_global_draws_suspends_the_mode_for_code_that_seeds_itself():
    torch.manual_seed(3)
    expected = torch.rand(2, 4)
    with per_image_draws([7, 8]) as mode:
        with global_draws():
            torch.manual_seed(3)
            inside = torch.rand(2, 4)
        after = torch.rand(2, 4)
    assert torch.equal(inside, expected) and mode.per_image_draws == 1
    with per_image_draws([7, 8]):
        assert torch.equal(torch.rand(2, 4), after)  # the mode was back on after the block
    with global_draws():  # no mode: a no-op
        pass


class _SeededNoise(Purifier):
    """A stand-in for a DIP defense: it seeds the global generator per call and draws B rows."""

    name = "seeded_noise"

    def purify(self, images, classifier, indices, labels=None):
        torch.manual_seed(1234)
        return (images + 0.01 * torch.rand(images.shape)).clamp(0, 1)


def test_a_defense_inside_an_attack_keeps_its_own_draws():
    defended = DefendedClassifier(nn.Flatten(), _SeededNoise())
    images = torch.rand(3, 1, 2, 2)
    with defended.bound_to(torch.arange(3)):
        outside = defended.purified(images)
        with per_image_draws([1, 2, 3]) as mode:
            inside = defended.purified(images)
    assert torch.equal(inside, outside) and mode.per_image_draws == 0


def test_attack_seeds_are_the_image_seeds_on_another_stream():
    assert attack_seed(0, 5) != 5 and attack_seed(0, 5) - attack_seed(0, 4) == 1
    assert attack_seed(1, 5) != attack_seed(0, 5)
