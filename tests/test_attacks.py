"""Every registered attack on a tiny CNN trained on a trivially separable task.

The task: 3x8x8 images whose class is the brightest colour channel (by a margin of 0.02
to 0.06), so an L-inf change of 8/255 can flip any of them.
"""

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dipdefense.attacks import ATTACKS, Attack, AttackError, build_attack
from dipdefense.evaluation.adversarial_cache import AdversarialCache, cached_attack

EPS = 8 / 255
N_ATTACKED = 24

# name -> (eps, params, smallest share of correctly classified images it must flip)
CASES = {
    "fgsm": (EPS, {}, 0.9),
    "pgd": (EPS, {}, 1.0),
    "bim": (EPS, {}, 1.0),
    "mifgsm": (EPS, {}, 1.0),
    "cw": (None, {}, 0.9),
    "deepfool": (None, {}, 0.9),
    "ddn": (None, {}, 1.0),
    "hopskipjump": (None, {"queries": 500}, 1.0),
    "gaussian_noise": (None, {}, 0.9),
    "uniform_noise": (None, {}, 0.9),
    # the same salt or pepper in every channel shrinks all channel gaps alike: it flips the
    # brightest-channel task only through the network's nonlinearity
    "salt_and_pepper": (None, {}, 0.6),
    "newtonfool": (None, {}, 0.9),
    "autoattack": (EPS, {"n_classes": 3}, 1.0),
    "apgd": (EPS, {"steps": 20}, 1.0),
    "square": (EPS, {"n_queries": 500}, 0.9),
    # the adaptive attacks on a bare model: the model is the undefended victim
    "bpda_pgd": (EPS, {}, 1.0),
    "eot_pgd": (EPS, {"eot": 2}, 1.0),
    # random-sign noise at 8/255 averages out over the 64 pixels of a channel: it flips few
    "random_noise": (EPS, {}, 0.0),
}
# attacks that need a defense projecting onto a generator (tested in test_adaptive.py and on INC)
NEEDS_A_GENERATOR = {"latent_space"}


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 3, (n,), generator=generator)
    levels = 0.3 + 0.4 * torch.rand(n, 3, generator=generator)
    others = levels.masked_fill(nn.functional.one_hot(labels, 3).bool(), 0).max(dim=1).values
    levels[torch.arange(n), labels] = others + 0.02 + 0.04 * torch.rand(n, generator=generator)
    noise = 0.05 * (2 * torch.rand(n, 3, 8, 8, generator=generator) - 1)
    images = (levels[:, :, None, None] + noise).clamp(0, 1)
    return images, images.mean(dim=(2, 3)).argmax(dim=1)  # exactly "the brightest channel"


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(8, 3),
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(one_thread):
    """(model in eval mode, 24 test images it classifies correctly, their labels)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = tiny_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 300)
    for _ in range(300):
        x, y = make_data(64, generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    x, y = make_data(200, generator)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.98, "the tiny victim did not learn its task"
    model.zero_grad(set_to_none=True)
    return model, x[correct][:N_ATTACKED], y[correct][:N_ATTACKED]


def test_registry_names():
    assert set(ATTACKS) == set(CASES) | NEEDS_A_GENERATOR
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == name
        assert cls.__doc__ and "Arguments:" in cls.__doc__ and re.search(r"\b20\d\d\b", cls.__doc__)


@pytest.mark.parametrize("name", list(CASES))
def test_attack_fools_the_tiny_cnn(name, trained):
    model, x, y = trained
    eps, params, min_flipped = CASES[name]
    attack = build_attack(name, eps=eps, **params)
    # a model in train mode with one part deliberately in eval mode: both must be restored
    model.train()
    model[5].eval()
    bn_stats = model[1].running_mean.clone()
    x_before = x.clone()
    torch.manual_seed(1)
    with torch.no_grad():  # the wrapper re-enables gradients
        adv = attack(model, x, y)

    assert model.training and not model[5].training and model[1].training
    assert torch.equal(model[1].running_mean, bn_stats), "the attack ran the model in train mode"
    assert all(p.grad is None for p in model.parameters()), "the attack left gradients on the model"
    assert torch.equal(x, x_before)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if attack.norm == "linf" and attack.eps is not None:
        assert delta.abs().max() <= attack.eps + 1e-6
    assert torch.isfinite(delta.norm(dim=1)).all()

    model.eval()
    with torch.no_grad():
        flipped = (model(adv).argmax(1) != y).float().mean().item()
    assert flipped >= min_flipped, f"{name} flipped only {flipped:.0%}"
    if eps is None:  # no budget: perturbations still far from the whole image range
        assert delta.norm(dim=1).median() < 0.5 * math.sqrt(x[0].numel())
    if attack.norm == "l2" and eps is None:  # gradient minimum-norm attacks: near the 8/255 L-inf ball's L2 (0.43)
        assert delta.norm(dim=1).median() < 1.0


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += len(images)
        return self.inner(images)


def test_hopskipjump_spends_exactly_its_query_budget(trained):
    model, x, y = trained
    counted = Counting(model)
    attack = build_attack("hopskipjump", eps=0.1, queries=300, constraint="linf")
    torch.manual_seed(2)
    adv = attack(counted, x, y)
    # every image spends its whole budget, and the model sees exactly the charged queries (a
    # repeated input is answered from memory, and none of these images' probes repeated one; a
    # settled image's inputs never reach it)
    assert attack.last_queries.tolist() == [300] * len(x) and counted.rows == 300 * len(x)
    assert attack.norm == "linf" and (adv - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).float().mean() >= 0.75


def test_hopskipjump_budget_cuts_the_same_run_shorter(trained):
    model, x, y = trained

    def distances(queries: int) -> torch.Tensor:
        torch.manual_seed(3)
        adv = build_attack("hopskipjump", queries=queries, constraint="linf")(model, x, y)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        return torch.where(fooled, (adv - x).flatten(1).abs().amax(1), torch.inf)

    # the budget does not change the trajectory, only where it stops: more queries are never farther
    short, long = distances(120), distances(400)
    assert short.isfinite().any() and (long <= short).all() and (long < short).any()


def test_hopskipjump_snapshots_are_the_runs_with_the_smaller_budgets(trained):
    model, x, y = trained

    def run(queries: int, snapshots: tuple[int, ...] = ()):
        attack = build_attack("hopskipjump", queries=queries, constraint="linf")
        attack.snapshot_budgets = snapshots
        torch.manual_seed(4)
        return attack(model, x, y), attack

    _, long = run(400, (60, 150))  # 60: inside the first bisections
    for q in (60, 150):
        alone, single = run(q)
        snapshot, spent = long.last_snapshots[q]
        assert torch.equal(snapshot, alone) and torch.equal(spent, single.last_queries), q
        assert torch.equal(long.last_snapshot_answers[q], single.last_answers), q


def test_decision_oracle_answers_refused_inputs_with_their_label_and_keeps_the_closest_fooling_query():
    from dipdefense.attacks.hopskipjump import BudgetSpent, DecisionOracle

    class AlwaysWrongRefusingHalf(nn.Module):
        last_rejected = torch.tensor([True, False])

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return nn.functional.one_hot(torch.tensor([1, 0]), 3).float()  # labels are 0 and 1: both wrong

    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    oracle = DecisionOracle(AlwaysWrongRefusingHalf(), x, y, "linf", budget=2)
    assert oracle(x + 0.2).argmax(1).tolist() == [0, 0]  # image 0 refused: answered with its own label
    oracle(x + 0.1)
    assert oracle.best[0].eq(0.5).all() and oracle.best[1].eq(0.6).all()  # the closer of image 1's queries
    assert oracle.best_distance[1].item() == pytest.approx(0.1) and oracle.queries.tolist() == [2, 2]
    with pytest.raises(BudgetSpent):
        oracle(x)
    with oracle.on_rows(torch.tensor([1])), pytest.raises(RuntimeError, match="called on 2 images"):
        oracle.budget = 9
        oracle(x)


class Brightness(nn.Module):
    """Class 1 when the mean pixel is above 0.5, else class 0 (of 3); records each call's size."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(images))
        return nn.functional.one_hot((images.mean(dim=(1, 2, 3)) > 0.5).long(), 3).float()


def test_decision_oracle_charges_new_inputs_only_and_settles_an_image_at_its_budget():
    from dipdefense.attacks.hopskipjump import BudgetSpent, DecisionOracle

    model = Brightness()
    x, y = torch.tensor([0.2, 0.3]).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone(), torch.tensor([0, 0])
    oracle = DecisionOracle(model, x, y, "linf", budget=3, snapshot_budgets=(1,))

    def ask(*levels: float) -> list[int]:
        return oracle(torch.tensor(levels).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone()).argmax(1).tolist()

    assert ask(0.6, 0.4) == [1, 0] and oracle.queries.tolist() == [1, 1]
    assert ask(0.6, 0.4) == [1, 0] and oracle.queries.tolist() == [1, 1]  # repeats: answered from memory
    with oracle.charging_repeats():  # HSJ's gradient probes pay for a repeat, still unasked
        assert ask(0.6, 0.4) == [1, 0] and oracle.queries.tolist() == [2, 2]
    assert ask(0.6, 0.55) == [1, 1] and oracle.queries.tolist() == [2, 3]  # only image 1's input is new
    # image 1 has spent its budget: its new input gets a wrong label, unasked and uncharged
    assert ask(0.65, 0.3) == [1, 1] and oracle.queries.tolist() == [3, 3]
    assert model.calls == [2, 1, 1]
    assert oracle.best[0].eq(0.6).all() and oracle.best[1].eq(0.55).all()  # the settled answer changed nothing
    with pytest.raises(BudgetSpent):
        ask(0.7, 0.7)
    oracle.finish_snapshots()
    best, spent = oracle.snapshots[1]  # each image as it stood before paying its 2nd query
    assert best[0].eq(0.6).all() and best[1].eq(0.3).all() and spent.tolist() == [1, 1]


def test_hopskipjump_initialisation_charges_each_image_only_its_own_noise_draws():
    from dipdefense.attacks.hopskipjump import DecisionOracle, _noise_starts

    model = Brightness()
    # a draw fools image 0 if its mean is above 0.5, image 1 if not; image 2 is already wrong
    x, y = torch.full((3, 1, 4, 4), 0.5), torch.tensor([0, 1, 0])
    x[1], x[2] = 0.9, 0.7
    torch.manual_seed(0)  # image 0 is fooled by the 1st draw, image 1 by the 4th
    oracle = DecisionOracle(model, x, y, "linf", budget=100)
    starts, found = _noise_starts(oracle, x, y)
    queries = oracle.queries.tolist()
    # one query of the image itself, each image's own draws up to its first success, then 10
    # bisections of the blend towards that draw, which end on the closest adversarial query
    assert found.tolist() == [True, True, False] and queries == [2 + 10, 5 + 10, 1]
    assert sum(model.calls) == sum(queries) and starts[0].mean() > 0.5 and starts[1].mean() <= 0.5
    assert torch.equal(oracle.best[:2], starts[:2])
    assert torch.equal(oracle.best[2], x[2]) and oracle.best_distance[2] == 0  # adversarial as it is


class BrightnessBins(nn.Module):
    """Class 0 for a mean pixel below 0.3, 2 above 0.7, else 1: uniform noise (mean 0.5 over
    192 pixels, sd 0.02) is always class 1."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return nn.functional.one_hot((mean > 0.3).long() + (mean > 0.7).long(), 3).float()


def test_hopskipjump_starts_an_image_no_noise_fools_from_the_nearest_image_of_another_class():
    from dipdefense.attacks.hopskipjump import DecisionOracle, _noise_starts

    # image 0 (class 1) is what all noise is called; its other-class images, nearest first:
    # image 3 (labelled 0, at 0.05, but called 1: not adversarial), image 1 (0.35 away, called 2)
    levels, y = [0.5, 0.85, 0.1, 0.45], torch.tensor([1, 2, 0, 0])
    x = torch.tensor(levels).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    torch.manual_seed(0)
    oracle = DecisionOracle(BrightnessBins(), x, y, "linf", budget=200)
    starts, found = _noise_starts(oracle, x, y)
    # image 0: itself, 100 noise draws, 2 other images, 10 bisections towards image 1;
    # images 1 and 2: the first draw fools them; image 3 is wrong as it is
    assert found.tolist() == [True, True, True, False]
    assert oracle.queries.tolist() == [1 + 100 + 2 + 10, 2 + 10, 2 + 10, 1]
    assert BrightnessBins()(starts[:1]).argmax(1).item() == 2 and 0.7 < starts[0].mean() < 0.71
    # the whole attack reports what each image's start cost, and attacks image 0 from it
    torch.manual_seed(0)
    attack = build_attack("hopskipjump", queries=200, constraint="linf")
    adv = attack(BrightnessBins(), x, y)
    assert attack.last_start_queries.tolist() == [113, 12, 12, 1] and attack.last_queries[0] == 200
    assert BrightnessBins()(adv[:3]).argmax(1).tolist() == [2, 1, 1] and (adv[0] - x[0]).abs().max() < 0.21
    # what the oracle answered on each returned input (image 3 as it is: called 1)
    assert attack.last_answers.tolist() == [2, 1, 1, 1]
    # clipped to a budget the end point is an input the oracle was never asked: no answer
    torch.manual_seed(0)
    clipped = build_attack("hopskipjump", eps=0.05, queries=200, constraint="linf")
    clipped(BrightnessBins(), x, y)
    assert clipped.last_answers[0] == -1 and clipped.last_answers[3] == 1
    # with too small a budget the search stops at it, and the image stays unattacked
    oracle = DecisionOracle(BrightnessBins(), x, y, "linf", budget=102)
    _, found = _noise_starts(oracle, x, y)
    assert found.tolist() == [False, True, True, False] and oracle.queries[0] == 102
    # alone in its batch it has no other image to start from
    oracle = DecisionOracle(BrightnessBins(), x[:1], y[:1], "linf", budget=200)
    _, found = _noise_starts(oracle, x[:1], y[:1])
    assert found.tolist() == [False] and oracle.queries.tolist() == [101]


def test_hopskipjump_pays_for_gradient_queries_that_repeat_an_input():
    # image 0 sits on the decision boundary: HSJ's gradient probes around its start fall below
    # float resolution and repeat the start. They still cost queries (ART pays them); answered
    # free, the image would never spend its budget and the attack would run all its iterations
    # (130 of 300 queries spent, 60 s here)
    x, y = torch.full((2, 3, 8, 8), 0.5), torch.tensor([0, 0])
    x[1] = 0.3
    torch.manual_seed(0)
    attack = build_attack("hopskipjump", queries=300, constraint="linf")
    adv = attack(Brightness(), x, y)
    assert attack.last_queries.tolist() == [300, 300]
    assert (adv[0] - x[0]).abs().max() < 1e-6 and Brightness()(adv).argmax(1).tolist() == [1, 1]


def test_hopskipjump_gets_nowhere_against_a_defense_that_refuses_everything(trained):
    model, x, y = trained

    class RefusesAll(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.victim, self.last_rejected = model, None

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.last_rejected = torch.ones(len(images), dtype=torch.bool)
            return self.victim(images)

    adv = build_attack("hopskipjump", queries=300, constraint="linf")(RefusesAll(), x, y)
    assert torch.equal(adv, x)


def test_l2_projection_safety_net():
    class Overshoot(Attack):
        name, norm, eps_mode = "overshoot", "l2", "required"

        def __init__(self, eps: float) -> None:
            self.eps = eps

        def _run(self, model, images, labels):
            return images + torch.randn_like(images)

    x = torch.rand(4, 3, 8, 8)
    adv = Overshoot(0.5)(nn.Flatten(), x, torch.zeros(4, dtype=torch.long))
    assert adv.min() >= 0 and adv.max() <= 1
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_bad_inputs_are_refused(trained):
    model, x, y = trained
    attack = build_attack("fgsm", eps=EPS)
    with pytest.raises(ValueError, match=r"\[0, 1\].*found values in \[-0\.\d+, 0\.\d+\]"):
        attack(model, x - 0.5, y)
    with pytest.raises(ValueError, match="float tensor"):
        attack(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="float tensor"):
        attack(model, x.numpy(), y)
    with pytest.raises(ValueError, match="shape"):
        attack(model, x, y[:-1])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        attack(model, x[0], y[:1])
    with pytest.raises(ValueError, match="integer"):
        attack(model, x, y.float())
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        attack(model, x, y)
    assert attack(model, x[:0], y[:0]).shape == (0, 3, 8, 8)


def test_build_attack_refuses_bad_names_budgets_and_parameters():
    with pytest.raises(ValueError, match="unknown attack 'pgdd'.*fgsm, pgd, bim.*newtonfool"):
        build_attack("pgdd", eps=EPS)
    for eps in (8, 0, -0.1, float("nan"), "8/255"):
        with pytest.raises(ValueError, match=r"pixel units"):
            build_attack("pgd", eps=eps)
    with pytest.raises(ValueError, match="pgd: eps is required"):
        build_attack("pgd")
    with pytest.raises(ValueError, match="cw is a minimum-norm attack"):
        build_attack("cw", eps=EPS)
    with pytest.raises(ValueError, match="unknown parameter.*stepz.*accepted: alpha, steps, random_start"):
        build_attack("pgd", eps=EPS, stepz=5)
    with pytest.raises(ValueError, match="constraint"):
        build_attack("hopskipjump", constraint="l1")
    with pytest.raises(AttackError):  # also a UserError: entry points print it on one line
        build_attack("nope")
    assert build_attack("hopskipjump", eps=2.0).eps == 2.0  # an L2 budget may exceed 1


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("pgd", {"steps": -5}, "steps=-5 is not accepted; steps must be an integer >= 1"),  # ran 0 steps: 100%
        ("pgd", {"steps": 0}, "steps must be an integer >= 1"),
        ("pgd", {"steps": 2.5}, "steps must be an integer >= 1"),
        ("pgd", {"steps": True}, "steps must be an integer >= 1"),
        ("pgd", {"alpha": -0.01}, "alpha must be a number >= 0"),
        ("pgd", {"alpha": float("nan")}, "alpha must be a number >= 0"),
        ("pgd", {"random_start": "yes"}, "random_start must be true or false"),
        ("bpda_pgd", {"eot": -1}, "eot must be an integer >= 0"),
        ("hopskipjump", {"queries": "many"}, "queries must be an integer >= 1"),
        ("bpda_pgd", {"select": 3}, "select must be a string"),
    ],
)
def test_build_attack_refuses_parameters_of_the_wrong_type_or_sign(name, params, message):
    eps = None if name == "hopskipjump" else EPS
    with pytest.raises(AttackError, match=message):
        build_attack(name, eps=eps, **params)


def test_build_attack_accepts_zero_seeds_and_draws_and_none_where_allowed():
    assert build_attack("bpda_pgd", eps=EPS, eot=0, alpha=None).eot == 0
    assert build_attack("autoattack", eps=EPS, seed=0).seed == 0
    assert build_attack("hopskipjump", eps=None, queries=1).queries == 1


def test_params_are_json_and_tell_settings_apart():
    for name, (eps, params, _) in CASES.items():
        record = build_attack(name, eps=eps, **params).params()
        assert json.loads(json.dumps(record)) == record
        assert record["name"] == name and record["eps"] == eps
    pgd = build_attack("pgd", eps=EPS).params()
    assert pgd["steps"] == 10 and pgd["alpha"] == pytest.approx(2 / 255) and pgd["random_start"] is True
    assert pgd != build_attack("pgd", eps=EPS, steps=20).params()
    assert pgd != build_attack("pgd", eps=4 / 255).params()
    assert build_attack("cw").params() != build_attack("cw", c=10).params()
    assert build_attack("hopskipjump").params() != build_attack("hopskipjump", queries=200).params()


def test_advertorch_shim():
    importlib.import_module("dipdefense.common.advertorch_compat")
    advertorch_attacks = importlib.import_module("advertorch.attacks")  # fails on torch>=1.9 without the shim
    assert advertorch_attacks.DDNL2Attack is not None

    zero_gradients = sys.modules["torch.autograd.gradcheck"].zero_gradients
    t = torch.ones(3, requires_grad=True)
    (2 * t).sum().backward()
    zero_gradients(t)
    assert torch.equal(t.grad, torch.zeros(3))
    u = torch.ones(2, requires_grad=True)
    (u * 3).sum().backward()
    zero_gradients([u, torch.zeros(1)])
    assert torch.equal(u.grad, torch.zeros(2))


def test_non_finite_library_output_is_replaced_by_the_clean_image(trained):
    model, x, y = trained
    saturated = nn.Sequential(model, nn.Identity())
    saturated[1] = type("Scale", (nn.Module,), {"forward": lambda self, z: 1000 * z})()
    adv = build_attack("newtonfool", steps=5)(saturated, x, y)
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1


def test_import_is_cheap():
    """foolbox and advertorch load only when one of their attacks runs."""
    code = "import sys, dipdefense.attacks; print(sorted(m for m in ('foolbox', 'advertorch', 'torchattacks') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# Attacks whose only randomness is per image; apgd, square, autoattack and hopskipjump draw on
# the subset of images not yet fooled, so their draws stay seeded per chunk.
PER_IMAGE_ATTACKS = {
    "pgd": {"eps": EPS, "steps": 3},
    "salt_and_pepper": {"steps": 20},
    "bpda_pgd": {"eps": EPS, "steps": 3},
    "eot_pgd": {"eps": EPS, "steps": 2, "eot": 2},
    "random_noise": {"eps": EPS, "tries": 3},
}


@pytest.mark.parametrize("name", list(PER_IMAGE_ATTACKS))
def test_an_images_adversarial_example_does_not_depend_on_its_chunk(name, trained, tmp_path):
    model, images, labels = trained
    attack = build_attack(name, **PER_IMAGE_ATTACKS[name])
    indices = torch.arange(20, 26)
    cache = AdversarialCache(tmp_path / "cache")

    def chunk(rows: slice, rng: str) -> torch.Tensor:
        args = (model, images[rows], labels[rows], indices[rows], 0, rng)
        return cached_attack(cache, {"victim": "tiny", "dataset": "t"}, attack, name, attack.eps, *args)

    whole, tail = chunk(slice(0, 6), "per-image"), chunk(slice(3, 6), "per-image")
    assert torch.equal(whole[3:], tail)
    if name in ("pgd", "bpda_pgd", "random_noise"):  # per chunk, the same images got other starts
        assert not torch.equal(chunk(slice(0, 6), "per-chunk")[3:], chunk(slice(3, 6), "per-chunk"))


def test_an_unknown_attack_rng_is_refused(trained, tmp_path):
    model, images, labels = trained
    with pytest.raises(ValueError, match="attack_rng 'per-batch': one of per-image, per-chunk"):
        cached_attack(
            AdversarialCache(tmp_path), {}, build_attack("fgsm", eps=EPS), "fgsm", EPS, model,
            images[:2], labels[:2], torch.arange(2), 0, "per-batch",
        )  # fmt: skip
