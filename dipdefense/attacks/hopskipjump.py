"""HopSkipJump (Chen et al. 2020) from foolbox 3, as paper 002 ran it (ART's start), with an exact
per-image query budget (``DecisionOracle``) and the worst case over its iterates kept.

foolbox is imported where it runs (it is slow to import); the images' device is always passed to it.
"""

import contextlib
import functools
import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dipdefense.attacks.base import Attack, AttackError, check_eps
from dipdefense.attacks.foolbox_attacks import foolbox_model

# HopSkipJump starts, as ART's does (paper 002 ran ART's HSJ), from a uniform-noise draw the
# model gets wrong, at most 100 draws per image (ART's init_size).
HSJ_INIT_DIRECTIONS = 100


# ...then bisects the blend between the image and that draw to this width (ART's threshold: 10 queries).
HSJ_INIT_BLEND_WIDTH = 0.001


class BudgetSpent(Exception):
    """Raised by ``DecisionOracle`` to stop an attack once every image has spent its budget."""


def _input_key(x: torch.Tensor) -> bytes:
    return hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest()


class DecisionOracle(nn.Module):
    """The model a decision-based attack queries: the label ``model`` gives (as one-hot
    logits), with the bookkeeping an exact per-image query budget needs.

    - Charges an image one query per input it has not been answered on before. A repeated
      input is answered from memory, free: the attacker already holds that answer (foolbox's
      lockstep loops re-send finished images' inputs while other images of the batch go on);
      within ``charging_repeats`` a repeat is charged too (without asking the model).
    - Sends the model only the charged rows (narrowing a defense bound to dataset indices to
      them), so finished images cost no DIP fits either.
    - Answers an input the defense refused (``last_rejected``: INC's rejection, a detector's
      flag) with the image's own label: to a decision oracle a refusal is not being fooled, as
      every other adaptive attack here scores it.
    - Keeps, per image, the closest input (in ``norm``) it answered as adversarial: what an
      attacker with this many queries holds.
    - Once an image has spent ``budget``, answers its new inputs with a wrong label without
      asking the model or charging it (the image's result is settled; a lockstep attack only
      needs an answer to carry the rest of the batch on), and raises ``BudgetSpent`` when every
      image of the call has spent its budget.
    - Keeps ``snapshots[q]`` = (closest adversarials, queries): each image's as it stood when
      it was about to pay its (q+1)-th query, i.e. what a run with budget ``q`` ends with, since
      the budget only decides where each image's part of the same run stops, and a settled
      image's answers change no other image's trajectory (``finish_snapshots``).

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
        self.images, self.labels, self.labels_cpu = images.detach(), labels, labels.cpu()
        self.rows = torch.arange(len(images), device=images.device)
        self.queries = torch.zeros(len(images), dtype=torch.long)
        self.best = self.images.clone()
        self.best_distance = torch.full((len(images),), math.inf, device=images.device)
        self.answers: list[dict[bytes, int]] = [{} for _ in range(len(images))]
        self.num_classes: int | None = None
        self.charge_repeats = False
        self._snapshot_best = {q: self.images.clone() for q in self.snapshot_budgets}
        self._snapshot_queries = {q: torch.full((len(images),), -1, dtype=torch.long) for q in self.snapshot_budgets}
        self.snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.train(False)

    @contextlib.contextmanager
    def on_rows(self, rows: torch.Tensor) -> Any:
        """Within the block, calls carry only these rows of the batch, in this order."""
        previous, self.rows = self.rows, rows.to(self.images.device)
        try:
            yield self
        finally:
            self.rows = previous

    def spent(self, rows: torch.Tensor) -> torch.Tensor:
        """Which of these rows of the batch have spent their budget."""
        return self.queries[rows.cpu()] >= self.budget

    @contextlib.contextmanager
    def charging_repeats(self) -> Any:
        """Within the block a repeated input is charged too (still answered from memory): the
        queries a round of HSJ's gradient estimation makes, which ART pays for one by one even
        where they coincide (a perturbation below float resolution), and which would otherwise
        leave an image that makes only such queries never spending its budget."""
        previous, self.charge_repeats = self.charge_repeats, True
        try:
            yield self
        finally:
            self.charge_repeats = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows.cpu()
        if len(x) != len(rows):
            raise RuntimeError(f"the oracle was called on {len(x)} images; the attacked rows are {len(rows)}")
        if self.spent(rows).all():
            raise BudgetSpent
        keys = [_input_key(row) for row in x.detach().cpu()]
        answer = torch.full((len(rows),), -1, dtype=torch.long)
        ask, repeats = [], []
        for position, (row, key) in enumerate(zip(rows.tolist(), keys, strict=True)):
            settled = bool(self.queries[row] >= self.budget)
            if key in self.answers[row]:
                answer[position] = self.answers[row][key]
                if self.charge_repeats and not settled:
                    repeats.append(row)
            elif settled:  # any wrong label carries the batch on
                answer[position] = -2
            else:
                ask.append(position)
        if repeats:
            self._charge(torch.tensor(repeats))
        if ask:
            answer[ask] = self._ask(x[ask], torch.tensor(ask))
            for position in ask:
                self.answers[rows[position]][keys[position]] = int(answer[position])
        answer = torch.where(answer == -2, (self.labels_cpu[rows] + 1) % self.num_classes, answer)
        return nn.functional.one_hot(answer, self.num_classes).float().to(x.device)

    def _charge(self, counted: torch.Tensor) -> None:
        """One query more for these rows of the batch (CPU indices), snapshotting any about to
        pass a snapshot budget."""
        for q in self.snapshot_budgets:
            reach = counted[(self.queries[counted] >= q) & (self._snapshot_queries[q][counted] < 0)]
            self._snapshot_best[q][reach.to(self.best.device)] = self.best[reach.to(self.best.device)]
            self._snapshot_queries[q][reach] = self.queries[reach]
        self.queries[counted] += 1

    def _ask(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's labels for these rows of the call, charged and tracked."""
        rows = self.rows[positions.to(self.rows.device)]
        self._charge(rows.cpu())
        # a defended model bound to dataset indices (a seeded defense) follows the rows asked
        narrow = getattr(self.model, "restricted_to", None)
        with narrow(rows) if narrow else contextlib.nullcontext():
            logits = self.model(x)
        self.num_classes = logits.shape[1]
        labels = self.labels[rows]
        predicted = logits.argmax(1)
        rejected = getattr(self.model, "last_rejected", None)
        if rejected is not None:
            predicted = torch.where(rejected.to(predicted.device), labels, predicted)
        fooled = predicted != labels
        delta = (x - self.images[rows]).flatten(1)
        distance = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        closer = fooled & (distance < self.best_distance[rows])
        self.best[rows[closer]] = x[closer].detach()
        self.best_distance[rows[closer]] = distance[closer]
        return predicted.cpu()

    def answered(self, x: torch.Tensor) -> torch.Tensor:
        """Per row of the whole batch, the label this oracle answered on that row's input in
        ``x`` (a refusal as the image's own label), or -1 where it was never asked it: what the
        attacker was told about the input it ends with."""
        keys = [_input_key(row) for row in x.detach().cpu()]
        return torch.tensor([self.answers[row].get(key, -1) for row, key in enumerate(keys)], dtype=torch.long)

    def finish_snapshots(self) -> None:
        """At the end of the attack: an image that never reached a budget ends where it ended."""
        for q in self.snapshot_budgets:
            unset = self._snapshot_queries[q] < 0
            self._snapshot_best[q][unset.to(self.best.device)] = self.best[unset.to(self.best.device)]
            self._snapshot_queries[q][unset] = self.queries[unset]
            self.snapshots[q] = (self._snapshot_best[q], self._snapshot_queries[q])


def _noise_starts(
    oracle: DecisionOracle, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ART's HopSkipJump initialisation (``HopSkipJump._init_sample``): each image is asked about
    first (one the model already gets wrong is adversarial at distance 0 and needs no attack),
    then uniform-noise draws until one is answered adversarial, at most ``HSJ_INIT_DIRECTIONS``,
    each image asking (and paying) only until its own first success; an image no draw fools
    tries the batch's images of other classes (``_other_image_starts``); then a bisection of
    the blend (1 - a) x + a start down to ``HSJ_INIT_BLEND_WIDTH`` (10 queries each). The draws come
    from their own generator, seeded by one draw of the global one, so how many rounds the batch
    needs does not move the attack's later draws. Returns the starts and which images HSJ
    should attack from them."""
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    starts, found = images.clone(), torch.zeros(len(images), dtype=torch.bool)
    with torch.no_grad():
        already_wrong = (oracle(images).argmax(1) != labels).cpu()
    todo = torch.arange(len(images))[~already_wrong]
    for _ in range(HSJ_INIT_DIRECTIONS):
        todo = todo[~oracle.spent(todo)]
        if not len(todo):
            break
        noise = torch.rand(images.shape, generator=generator).to(images.device, images.dtype)
        on_device = todo.to(images.device)
        with oracle.on_rows(on_device), torch.no_grad():
            fooled = (oracle(noise[on_device]).argmax(1) != labels[on_device]).cpu()
        hit = on_device[fooled.to(images.device)]
        starts[hit] = noise[hit]
        found[todo[fooled]] = True
        todo = todo[~fooled]
    _other_image_starts(oracle, images, labels, todo, starts, found)  # it skips spent images itself
    blend = found.nonzero().flatten().to(images.device)
    if len(blend):
        originals, targets, wanted = images[blend], starts[blend], labels[blend]
        lows = torch.zeros(len(blend), device=images.device)
        highs = torch.ones(len(blend), device=images.device)
        shape = (-1, *[1] * (images.dim() - 1))
        with oracle.on_rows(blend), torch.no_grad():
            while (highs - lows > HSJ_INIT_BLEND_WIDTH).any():
                mids = (lows + highs) / 2
                fooled = oracle((1 - mids.view(shape)) * originals + mids.view(shape) * targets).argmax(1) != wanted
                highs, lows = torch.where(fooled, mids, highs), torch.where(fooled, lows, mids)
        starts[blend] = (1 - highs.view(shape)) * originals + highs.view(shape) * targets
    return starts, found.to(images.device)


def _other_image_starts(
    oracle: DecisionOracle,
    images: torch.Tensor,
    labels: torch.Tensor,
    todo: torch.Tensor,
    starts: torch.Tensor,
    found: torch.Tensor,
) -> None:
    """Starts for the images no noise draw fooled (``todo``, CPU rows): the batch's images of
    other classes, nearest (L2) first, one query each, until one is answered adversarial, as
    foolbox's ``DatasetAttack`` starts a decision-based attack. A victim that calls all noise by
    a few classes leaves the images of those classes without a noise start (8 of 89 CIFAR-10
    test images here); without this they were never attacked and counted as robust. Images
    with a noise start never get here, so their attack is revision 3's. Fills ``starts`` and
    ``found`` in place."""
    if not len(todo):
        return
    rows = todo.to(images.device)
    flat = images.flatten(1).float()
    distance = torch.cdist(flat[rows], flat)
    distance[labels[rows, None] == labels[None, :]] = math.inf  # same class: no use as a start
    order, tries = distance.argsort(1).cpu(), distance.isfinite().sum(1).cpu()
    pending = torch.ones(len(todo), dtype=torch.bool)
    for attempt in range(int(tries.max())):
        which = (pending & (tries > attempt)).nonzero().flatten()
        which = which[~oracle.spent(todo[which])]
        if not len(which):
            break
        asking = todo[which].to(images.device)
        candidates = images[order[which, attempt].to(images.device)]
        with oracle.on_rows(asking), torch.no_grad():
            fooled = (oracle(candidates).argmax(1) != labels[asking]).cpu()
        starts[asking[fooled.to(images.device)]] = candidates[fooled.to(images.device)]
        found[todo[which[fooled]]] = True
        pending[which[fooled]] = False


@functools.cache
def _rowwise_hopskipjump() -> type:
    """foolbox's HopSkipJumpAttack with each image's bisection stopping at its own threshold,
    as ART's (which attacks one image at a time) does. foolbox bisects the whole batch until its
    slowest image is done; here a finished image re-sends its adversarial end, which the
    ``DecisionOracle`` answers from memory, so it pays nothing more."""
    import eagerpy as ep
    import foolbox as fb

    class RowwiseHopSkipJump(fb.attacks.HopSkipJumpAttack):
        oracle: "DecisionOracle"

        def approximate_gradients(self, is_adversarial: Any, x_advs: Any, steps: int, delta: Any) -> Any:
            with self.oracle.charging_repeats():
                return super().approximate_gradients(is_adversarial, x_advs, steps, delta)

        def _binary_search(self, is_adversarial: Any, originals: Any, perturbed: Any) -> Any:
            # foolbox 3.3's _binary_search, with `searching` freezing the finished rows
            d = int(np.prod(perturbed.shape[1:]))
            if self.constraint == "linf":
                highs = fb.distances.linf(originals, perturbed)
                thresholds = highs * self.gamma / (d * d)
            else:
                highs = ep.ones(perturbed, len(perturbed))
                thresholds = highs * self.gamma / (d * math.sqrt(d))
            lows = ep.zeros_like(highs)
            old_mids = highs
            while ep.any(highs - lows > thresholds):
                searching = highs - lows > thresholds
                mids = ep.where(searching, (lows + highs) / 2, highs)
                adversarial = is_adversarial(self._project(originals, perturbed, mids))
                highs = ep.where(adversarial, mids, highs)
                lows = ep.where(adversarial, lows, mids)
                if (old_mids == mids).all():  # no progress left in floating point
                    break
                old_mids = mids
            return self._project(originals, perturbed, highs)

    return RowwiseHopSkipJump


class HopSkipJump(Attack):
    """HopSkipJump, Chen, Jordan & Wainwright 2020 ("HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack"); wraps ``foolbox.attacks.HopSkipJumpAttack``. Decision-based: it
    queries only the predicted label. Paper 002 ran ART's implementation, which attacks one
    image at a time; foolbox attacks a batch in lockstep, which is what lets a batch of queries
    reach a DIP defense as one batch. The accounting below makes each image's budget its own.

    The query budget is exact per image: the attack runs on a ``DecisionOracle`` that charges
    an image one query per input it has not been answered on before, sends the model only
    charged rows, and settles an image at ``queries`` (``last_queries`` says how many each paid,
    ``last_start_queries`` how many of them went into finding its start);
    each image gets the closest input the oracle answered as adversarial within its budget.
    Starts as ART does: one query of the image itself (one the model already gets wrong stays
    as it is, at distance 0), then per image uniform-noise draws until one is adversarial (at
    most 100), paid by that image alone; an image no draw fools then tries the batch's images
    of other classes, nearest first, one query each (foolbox's ``DatasetAttack`` start; ART
    would leave it unattacked); then 10 bisections of the blend towards the start; HSJ's own
    bisection then takes the start to the boundary, each image stopping at its own threshold.
    Images no query fools come back unchanged. An input the defense refuses counts as not
    adversarial. ``last_answers`` (and ``last_snapshot_answers``) hold the label the oracle
    answered on each returned input: HSJ ends on the decision boundary, where a second run of
    the same defended model in another batch can round to the other side, so the evaluation
    scores the attack by what its oracle answered (what the attacker holds) and reports how
    often its own re-run disagrees.

    The budget only decides where each image's part of a run stops, so with
    ``snapshot_budgets`` set (smaller budgets; not a parameter: it changes no result) one run
    also leaves in ``last_snapshots`` what runs with those budgets and the same random state
    would return: paper 002 Fig. 5's 200 / 1000 / 2500 grid for the cost of its largest
    budget. (Exact while every image's start, noise draws and other images, fits in the smaller
    budget: an image that finds no start within it is left out of the HSJ batch, which changes
    the batch's draws.)

    Distance measure: ``constraint``. With ``eps`` None it is a minimum-norm attack; with eps
    the result is clipped to the eps ball.

    Arguments:
        eps (float | None): budget in [0, 1] pixel units in the ``constraint`` norm. Default: None.
        queries (int): queries per image (paper 002 Fig. 5: 200, 1000, 2500). Default: 1000.
        constraint (str): "l2" or "linf". Default: "l2".
        gamma (float): binary-search threshold factor. Default: 1.0.
        initial_gradient_eval_steps (int): gradient-estimation queries at the first iteration. Default: 100.
        max_gradient_eval_steps (int): cap on gradient-estimation queries per iteration. Default: 10000.
    """

    name = "hopskipjump"
    library = "foolbox"
    eps_mode = "optional"
    # 4: as 3, and an image no noise draw fools starts from the nearest image of another
    # class in the batch (under 3 it was never attacked);
    # 3: ART's start (the image itself, noise draws, a blend bisection), each image paying
    # only for its own draws and for inputs it had not sent before (gradient probes always),
    # and stopping its bisections at its own threshold;
    # 2: the budget counted call by call for the whole chunk, foolbox's blended-noise line
    # search charged to every image; 1: foolbox's final point after an estimated number of
    # iterations, a refusal taken as the victim's answer.
    revision = 4

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
        self.last_start_queries: torch.Tensor | None = None  # of them, what finding a start cost
        self.snapshot_budgets: tuple[int, ...] = ()
        self.last_snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # the oracle's answer on each returned input (-1: never asked, e.g. clipped to eps)
        self.last_answers: torch.Tensor | None = None
        self.last_snapshot_answers: dict[int, torch.Tensor] = {}
        self._oracle: DecisionOracle | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "revision": self.revision}

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smaller = tuple(q for q in self.snapshot_budgets if q < self.queries)
        oracle = DecisionOracle(model, images, labels, self.constraint, self.queries, smaller)
        attack = _rowwise_hopskipjump()(
            steps=self.queries,  # each iteration costs queries: the oracle's budget ends the attack
            initial_gradient_eval_steps=self.initial_gradient_eval_steps,
            max_gradient_eval_steps=self.max_gradient_eval_steps,
            gamma=self.gamma,
            constraint=self.constraint,
        )
        attack.oracle = oracle
        start_queries = None
        try:
            # images no draw fools are left out instead of failing the batch (foolbox raises on them)
            starts, found = _noise_starts(oracle, images, labels)
            start_queries = oracle.queries.clone()
            if found.any():
                with oracle.on_rows(found.nonzero().flatten()):
                    fmodel = foolbox_model(oracle, images)
                    attack(fmodel, images[found], labels[found], epsilons=None, starting_points=starts[found])
        except BudgetSpent:
            pass
        oracle.finish_snapshots()
        self.last_queries = oracle.queries.clone()
        self.last_start_queries = oracle.queries.clone() if start_queries is None else start_queries
        self.last_snapshots = {q: (self.finish(best, images), spent) for q, (best, spent) in oracle.snapshots.items()}
        self.last_snapshot_answers = {q: oracle.answered(best) for q, (best, _) in self.last_snapshots.items()}
        self._oracle = oracle
        return oracle.best

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._oracle, self.last_answers = None, None
        adversarial = super().__call__(model, images, labels)
        if self._oracle is not None:  # (an empty batch never builds one)
            self.last_answers, self._oracle = self._oracle.answered(adversarial), None
        return adversarial
