"""Decision-based, noise and NewtonFool attacks wrapped from foolbox 3.

foolbox is imported inside ``_run`` (it is slow to import). ``fb.PyTorchModel`` moves the
model to its ``device`` argument, which defaults to CUDA when there is one, so the device
of the images is always passed. For minimum-norm runs foolbox returns, for images it could
not fool, whatever its search ended on (for the blended-noise search: pure noise); those
images come back unchanged here instead, so a failed attack never degrades an image.
"""

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dipdefense.attacks.base import Attack, AttackError, check_eps

# HopSkipJump starts from foolbox's own default initialisation, a blended-uniform-noise
# search, with at most 100 noise draws (ART's init_size; paper 002 ran ART's HSJ).
HSJ_INIT_STEPS = 50
HSJ_INIT_DIRECTIONS = 100


def _fmodel(model: nn.Module, images: torch.Tensor) -> Any:
    import foolbox as fb

    return fb.PyTorchModel(model, bounds=(0, 1), device=images.device)


def _keep_failures_clean(images: torch.Tensor, adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    return torch.where(success.view(-1, *[1] * (images.dim() - 1)), adv, images)


class _FoolboxMinimization(Attack):
    library = "foolbox"

    def _attack(self) -> Any:
        raise NotImplementedError

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, clipped, success = self._attack()(_fmodel(model, images), images, labels, epsilons=None)
        return _keep_failures_clean(images, clipped, success)


class BudgetSpent(Exception):
    """Raised by ``DecisionOracle`` to stop an attack at its query budget."""


class DecisionOracle(nn.Module):
    """The model a decision-based attack queries: ``model``'s logits, with the bookkeeping a
    query budget needs.

    - Counts queries per image. foolbox queries every image of the batch it attacks at each
      model call, so an image pays for every call made while it is in the attacked rows.
    - Answers an input the defense refused (``last_rejected``: INC's rejection, a detector's
      flag) with the image's own label: to a decision oracle a refusal is not being fooled, as
      every other adaptive attack here scores it.
    - Keeps, per image, the closest input (in ``norm``) it answered as adversarial: what an
      attacker with this many queries holds.
    - Raises ``BudgetSpent`` at the first call that would take an image past ``budget``.
    - Keeps ``snapshots[q]`` = (closest adversarials, queries) as they stood when the call that
      would take an image past ``q`` came: what a run with budget ``q`` ends with, since the
      budget only decides where the same run stops (``finish_snapshots``).

    Arguments:
        model: the attacked model (a ``DefendedClassifier`` for the adaptive threat model).
        images, labels: the attacked batch; every call must be this batch or ``on_rows``' rows.
        norm: "l2" or "linf", the distance that ranks adversarial inputs.
        budget: queries per image.
        snapshot_budgets: smaller budgets to keep snapshots at. Default: ().
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        norm: str,
        budget: int,
        snapshot_budgets: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.model, self.norm, self.budget = model, norm, int(budget)
        self.snapshot_budgets = sorted(int(q) for q in snapshot_budgets)
        self.snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.images, self.labels = images.detach(), labels
        self.rows = torch.arange(len(images), device=images.device)
        self.queries = torch.zeros(len(images), dtype=torch.long)
        self.best = self.images.clone()
        self.best_distance = torch.full((len(images),), math.inf, device=images.device)
        self.train(False)

    @contextlib.contextmanager
    def on_rows(self, rows: torch.Tensor) -> Any:
        """Within the block, calls carry only these rows of the batch, in this order."""
        previous, self.rows = self.rows, rows.to(self.images.device)
        try:
            yield self
        finally:
            self.rows = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if len(x) != len(rows):
            raise RuntimeError(f"the oracle was called on {len(x)} images; the attacked rows are {len(rows)}")
        counted = rows.cpu()
        spent = int(self.queries[counted].max())
        for q in self.snapshot_budgets:
            if spent >= q and q not in self.snapshots:
                self.snapshots[q] = (self.best.clone(), self.queries.clone())
        if spent >= self.budget:
            raise BudgetSpent
        self.queries[counted] += 1
        logits = self.model(x)
        labels = self.labels[rows]
        fooled = logits.argmax(1) != labels
        rejected = getattr(self.model, "last_rejected", None)
        if rejected is not None:
            rejected = rejected.to(fooled.device)
            fooled &= ~rejected
            own_label = nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
            logits = torch.where(rejected[:, None], own_label, logits)
        delta = (x - self.images[rows]).flatten(1)
        distance = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        closer = fooled & (distance < self.best_distance[rows])
        self.best[rows[closer]] = x[closer].detach()
        self.best_distance[rows[closer]] = distance[closer]
        return logits

    def finish_snapshots(self) -> None:
        """At the end of the attack: budgets never reached end where the attack ended."""
        for q in self.snapshot_budgets:
            self.snapshots.setdefault(q, (self.best.clone(), self.queries.clone()))


class HopSkipJump(Attack):
    """HopSkipJump, Chen, Jordan & Wainwright 2020 ("HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack"); wraps ``foolbox.attacks.HopSkipJumpAttack``. Decision-based: it
    queries only the predicted label. (Paper 002 ran ART's implementation.)

    The query budget is exact: foolbox's attack runs on a ``DecisionOracle`` that stops it at
    ``queries`` model calls per image, initialisation included, and each image gets the closest
    input the oracle answered as adversarial within them (``last_queries`` says how many each
    image paid). foolbox attacks the batch in lockstep, so an image pays for the calls its
    batch makes, one per call. An input the defense refuses counts as not adversarial.
    The budget only decides where a run stops, so with ``snapshot_budgets`` set (smaller
    budgets; not a parameter: it changes no result) one run also leaves in ``last_snapshots``
    what runs with those budgets and the same random state would return: paper 002 Fig. 5's
    200 / 1000 / 2500 grid for the cost of its largest budget.

    Distance measure: ``constraint``. With ``eps`` None it is a minimum-norm attack; with eps
    the result is clipped to the eps ball. Starts from foolbox's blended-uniform-noise search
    (at most 100 noise draws, as ART); images no query fools come back unchanged.

    Arguments:
        eps (float | None): budget in [0, 1] pixel units in the ``constraint`` norm. Default: None.
        queries (int): model calls per image (paper 002 Fig. 5: 200, 1000, 2500). Default: 1000.
        constraint (str): "l2" or "linf". Default: "l2".
        gamma (float): binary-search threshold factor. Default: 1.0.
        initial_gradient_eval_steps (int): gradient-estimation queries at the first iteration. Default: 100.
        max_gradient_eval_steps (int): cap on gradient-estimation queries per iteration. Default: 10000.
    """

    name = "hopskipjump"
    library = "foolbox"
    eps_mode = "optional"
    # 2: the budget is counted and enforced call by call, the closest adversarial query is
    # kept, refused inputs are not adversarial (1: foolbox's final point after an estimated
    # number of iterations, a refusal taken as the victim's answer).
    revision = 2

    def __init__(
        self,
        eps: float | None = None,
        queries: int = 1000,
        constraint: str = "l2",
        gamma: float = 1.0,
        initial_gradient_eval_steps: int = 100,
        max_gradient_eval_steps: int = 10000,
    ) -> None:
        if constraint not in ("l2", "linf"):
            raise AttackError(f"{self.name}: constraint must be 'l2' or 'linf'; got {constraint!r}")
        if int(queries) < 1:
            raise AttackError(f"{self.name}: queries must be a positive integer; got {queries!r}")
        self.norm = constraint
        self.eps = None if eps is None else check_eps(self.name, eps, constraint)
        self.queries, self.constraint, self.gamma = int(queries), constraint, float(gamma)
        self.initial_gradient_eval_steps = int(initial_gradient_eval_steps)
        self.max_gradient_eval_steps = int(max_gradient_eval_steps)
        self.last_queries: torch.Tensor | None = None
        self.snapshot_budgets: tuple[int, ...] = ()
        self.last_snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "revision": self.revision}

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import foolbox as fb

        smaller = tuple(q for q in self.snapshot_budgets if q < self.queries)
        oracle = DecisionOracle(model, images, labels, self.constraint, self.queries, smaller)
        fmodel = _fmodel(oracle, images)
        distance = fb.distances.l2 if self.constraint == "l2" else fb.distances.linf
        # foolbox's own initialisation, run here so that images it cannot fool are left out
        # instead of failing the whole batch (HopSkipJumpAttack raises on them).
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
            distance=distance, directions=HSJ_INIT_DIRECTIONS, steps=HSJ_INIT_STEPS
        )
        attack = fb.attacks.HopSkipJumpAttack(
            steps=self.queries,  # each iteration costs queries: the oracle's budget ends the attack
            initial_gradient_eval_steps=self.initial_gradient_eval_steps,
            max_gradient_eval_steps=self.max_gradient_eval_steps,
            gamma=self.gamma,
            constraint=self.constraint,
        )
        try:
            _, starts, found = init(fmodel, images, labels, epsilons=None)
            if found.any():
                rows = found.nonzero().flatten()
                # a defended model bound to dataset indices (a seeded defense) follows the subset
                narrow = getattr(model, "restricted_to", None)
                with narrow(found) if narrow else contextlib.nullcontext(), oracle.on_rows(rows):
                    attack(fmodel, images[found], labels[found], epsilons=None, starting_points=starts[found])
        except BudgetSpent:
            pass
        oracle.finish_snapshots()
        self.last_queries = oracle.queries.clone()
        self.last_snapshots = {q: (self.finish(best, images), spent) for q, (best, spent) in oracle.snapshots.items()}
        return oracle.best


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

        fmodel = _fmodel(model, images)
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
