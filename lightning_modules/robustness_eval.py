"""Attack, defend and measure inside Lightning's test loop, one chunk of images per step.

The test loop gives multi-device runs for free: each rank takes whole chunks through an
unrepeated sampler (Lightning's default DistributedSampler would pad with repeats), and
records are keyed by dataset index, so every image counts once. Attacks and DIP fits need
gradients: run under ``Trainer(inference_mode=False)``; gradients are enabled here.
"""

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dipdefense.attacks.adaptive import ADAPTIVE_REVISION
from dipdefense.common.atomic_files import atomic_torch_save
from dipdefense.common.ssim import per_image_ssim
from dipdefense.defenses.base import Defense, Detector
from dipdefense.defenses.defended import DefendedClassifier
from dipdefense.evaluation.adversarial_cache import PER_IMAGE, AdversarialCache, cached_attack_entry
from dipdefense.evaluation.attack_specs import ADAPTIVE, CLEAN, AttackRun
from dipdefense.evaluation.chunks import ChunkDataset
from dipdefense.evaluation.metrics import perturbation_norms
from dipdefense.evaluation.sample_log import RecordKey, SampleLog, rank_log_path, read_run_records, unique_records
from dipdefense.evaluation.trace_plots import plot_trace

from .progress_bar import ChunkProgress


class RobustnessEvaluation(pl.LightningModule):
    """Arguments:
    classifier: the victim (takes images in [0, 1]).
    defense: a :class:`defenses.Defense`.
    runs: the attack runs (``clean`` included where wanted).
    dataset: (image in [0, 1], label) pairs.
    indices: sampled dataset indices, in evaluation order.
    chunk_size: images per chunk (one attack batch, one defense batch).
    cache: the adversarial cache; ``cache_key`` holds the victim hash and data set name.
    records_dir: the run's folder; each rank appends its records to a file of its own there
        (``evaluation.sample_log``) and skips the (index, attack) pairs any file already holds.
    seed: the run's seed; an image's attack draws are seeded from (seed, its index).
    examples_dir: where the first chunk's images are kept for the example grid. Default: None.
    num_examples: images kept per attack for that grid. Default: 8.
    traces_dir: where decision-trace plots go for the images the defense traced. Default: None.
    class_names: for plot labels. Default: None.
    attack_model: the model the oblivious attacks are crafted on (a transfer attack); the cache
        key must then name it. Default: None, the victim itself.
    adaptive_cache_key: the cache key of attacks through the defense (threat model
        "adaptive"): the victim's hash, the data set, the defense and its parameters. Default:
        None, ``cache_key`` with the defense's name and parameters added.
    attack_rng: "per-image" (each image's random start from its own seed, whatever its chunk)
        or "per-chunk" (from the chunk's seed: runs begun before per-image draws). Default:
        "per-image".
    """

    def __init__(
        self,
        classifier: nn.Module,
        defense: Defense,
        runs: list[AttackRun],
        dataset: Dataset,
        indices: list[int],
        chunk_size: int,
        cache: AdversarialCache,
        cache_key: dict[str, Any],
        records_dir: Path,
        seed: int = 0,
        examples_dir: Path | None = None,
        num_examples: int = 8,
        traces_dir: Path | None = None,
        class_names: list[str] | None = None,
        attack_model: nn.Module | None = None,
        adaptive_cache_key: dict[str, Any] | None = None,
        attack_rng: str = PER_IMAGE,
    ) -> None:
        super().__init__()
        # The attacks and the per-image DIP fits run their own optimisers inside test_step
        # (the Trainer is built with inference_mode=False): Lightning must not drive any.
        self.automatic_optimization = False
        self.classifier = classifier.eval().requires_grad_(False)
        self.attack_model = self.classifier if attack_model is None else attack_model.eval().requires_grad_(False)
        self.defense = defense
        # The model an adaptive attacker attacks: victim(defense(x)), BPDA where needed.
        self.defended = (
            DefendedClassifier(self.classifier, defense) if not getattr(defense, "uses_labels", False) else None
        )
        # The revision is added to any key, the caller's too: adversarials made by an older
        # adaptive attack (or an older defense gradient) are never reused.
        self.adaptive_cache_key = {
            **(
                adaptive_cache_key
                or {**cache_key, "threat": ADAPTIVE, "defense": defense.name, "defense_params": defense.params()}
            ),
            "attack_revision": ADAPTIVE_REVISION,
        }
        self.runs = runs
        self.budget_families = {run.id: self._budget_family(run) for run in runs}
        # a budget family's largest run first: it pays the attack's time, the others read snapshots
        self.run_order = sorted(runs, key=lambda r: 0 if self.budget_families[r.id][-1:] == [r] else 1)
        self.chunks = ChunkDataset(dataset, indices, chunk_size)
        self.cache, self.cache_key = cache, cache_key
        self.records_dir = Path(records_dir)
        self.sample_log: SampleLog | None = None  # set per rank in on_test_start
        self.done: set[RecordKey] = set()
        self.seed, self.attack_rng = seed, attack_rng
        self.examples_dir, self.num_examples = examples_dir, num_examples
        self.traces_dir, self.class_names = traces_dir, class_names
        self.first_index = indices[0] if indices else None
        self.progress: ChunkProgress | None = None

    def test_dataloader(self) -> DataLoader:
        sampler = None
        if self.trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                self.chunks, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return DataLoader(self.chunks, batch_size=None, sampler=sampler)

    def on_test_start(self) -> None:
        self.defense.to(self.device)
        rank = self.trainer.global_rank
        self.sample_log = SampleLog(rank_log_path(self.records_dir, rank))
        self.done = set(unique_records(read_run_records(self.records_dir, repair_rank=rank)))
        if self.trainer.is_global_zero:
            mine = range(0, len(self.chunks), self.trainer.world_size)
            total = sum(len(self.chunks.chunks[k]) for k in mine) * len(self.runs)
            rank_note = f" (rank 0 of {self.trainer.world_size})" if self.trainer.world_size > 1 else ""
            self.progress = ChunkProgress(total, f"{self.defense.name or 'defense'}{rank_note}")

    def on_test_end(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.trainer.strategy.barrier("robustness_eval_done")

    def _adversarial(
        self, run: AttackRun, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The chunk's attacked "images" and what else the attack kept: the adaptive any-iterate
        attacks' "history", the decision attacks' "queries"."""
        if run.name == CLEAN:
            return {"images": images}
        family = self.budget_families[run.id]
        if family and family[-1] is not run:  # the largest budget's run leaves this one's entry
            self._adversarial(family[-1], images, labels, indices)
        prefixes = [r.build() for r in family[:-1]] if family and family[-1] is run else []
        if run.threat == ADAPTIVE:
            with self.defended.bound_to(indices):
                entry = cached_attack_entry(
                    self.cache, self.adaptive_cache_key, run.build(), run.name, run.eps, self.defended,
                    images, labels, indices, self.seed, self.attack_rng, prefixes,
                )  # fmt: skip
        else:
            entry = cached_attack_entry(
                self.cache, self.cache_key, run.build(), run.name, run.eps, self.attack_model,
                images, labels, indices, self.seed, self.attack_rng, prefixes,
            )  # fmt: skip
        return entry

    def _budget_family(self, run: AttackRun) -> list[AttackRun]:
        """The runs that differ from ``run`` only in their query budget (HopSkipJump at 200 /
        1000 / 2500), smallest budget first, or [] if it has none: one run of the largest
        budget gives all of them (``HopSkipJump.snapshot_budgets``)."""
        attack = run.build()
        if not hasattr(attack, "snapshot_budgets"):
            return []

        def rest(a: Any) -> dict[str, Any]:
            return {k: v for k, v in a.params().items() if k != "queries"}

        family = {}
        for other in self.runs:
            if other.name == run.name and other.threat == run.threat and other.eps == run.eps:
                built = other.build()
                if rest(built) == rest(attack):
                    family.setdefault(built.queries, other)
        return [family[q] for q in sorted(family)] if len(family) > 1 else []

    @torch.no_grad()
    def _classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).float()

    def test_step(self, chunk: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chunk_idx: int) -> None:
        images, labels, indices = chunk
        clean_pred = self._classify(images).argmax(1)
        for run in self.run_order:
            todo = [i for i, idx in enumerate(indices.tolist()) if (idx, run.id) not in self.done]
            if not todo:
                if self.progress is not None:
                    self.progress.skip(len(indices))
                continue
            if self.progress is None:
                self._evaluate_run(run, images, labels, indices, clean_pred, todo)
                continue
            # the first chunk's guess at the fits a run costs: one defense, plus one per attack
            # step (BPDA) or noise draw (random_noise) when the attack runs through the defense
            attack = run.build()
            per_step = getattr(attack, "steps", 0) or getattr(attack, "tries", 0)
            guess = 1 + (per_step if run.threat == ADAPTIVE else 0)
            with self.progress.chunk_of(run.id, len(indices), guess):
                self._evaluate_run(run, images, labels, indices, clean_pred, todo)

    def _evaluate_run(self, run: AttackRun, images, labels, indices, clean_pred, todo: list[int]) -> None:
        started = time.perf_counter()
        with torch.enable_grad():
            entry = self._adversarial(run, images, labels, indices)  # the chunk: one cache entry
        adversarial, history, queries = entry["images"], entry.get("history"), entry.get("queries")
        start_queries, answers, resubmit = entry.get("start_queries"), entry.get("answers"), entry.get("resubmit")
        attack_seconds = (time.perf_counter() - started) / len(indices)
        # how the decision attack counted its queries (HopSkipJump's revisions), kept with each record
        revision = getattr(run.build(), "revision", None) if queries is not None else None
        # Only the images without a record are defended (a resumed chunk); DIP defenses are
        # seeded per image, so a subset gets the same results as the whole chunk.
        sel = torch.tensor(todo, device=images.device)
        images, labels, indices, clean_pred, adversarial = (
            t[sel] for t in (images, labels, indices, clean_pred, adversarial)
        )
        history, queries, start_queries, answers, resubmit = (
            None if t is None else t[sel.to(t.device)] for t in (history, queries, start_queries, answers, resubmit)
        )
        adv_logits = self._classify(adversarial)
        started = time.perf_counter()
        scores, details, traces = None, [{} for _ in indices], {}
        if isinstance(self.defense, Detector):
            scores = self.defense.score(adversarial).float()
            defended, logits = adversarial, adv_logits
        else:
            with torch.enable_grad():
                given = labels if self.defense.uses_labels else None
                defended, details, traces = self.defense.purify_detailed(adversarial, self.classifier, indices, given)
            defended = defended.detach()
            logits = self._classify(defended)
        seconds = (time.perf_counter() - started) / len(indices)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None]).any(1)
        ssim = per_image_ssim(defended, images)
        l2, linf = perturbation_norms(adversarial, images)
        pred, adv_pred = logits.argmax(1), adv_logits.argmax(1)
        gradient = None
        if run.threat == ADAPTIVE:  # how the attack's gradient passed the defense, if it took one
            attack = run.build()
            label = getattr(attack, "gradient_label", None)
            gradient = (label(self.defended) if label else self.defended.gradient) if attack.needs_gradient else "none"
        records = []
        for i in range(len(indices)):
            record = {
                "index": int(indices[i]),
                "attack": run.id,
                "attack_name": run.name,
                "eps": run.eps,
                "label": int(labels[i]),
                "clean_pred": int(clean_pred[i]),
                "adv_pred": int(adv_pred[i]),
                "pred": int(pred[i]),
                "top5": bool(top5[i]),
                "ssim": float(ssim[i]),
                "l2": float(l2[i]),
                "linf": float(linf[i]),
                "seconds": seconds,
                "attack_seconds": attack_seconds,
                "threat_model": run.threat,
            }
            if gradient is not None:
                record["gradient"] = gradient
            if resubmit is not None:  # per resubmitted copy of the final iterate: still right
                record["resubmit"] = "".join("1" if r else "0" for r in resubmit[i].tolist())
            if history is not None:  # per iterate: was the defended victim still right
                right = history[i].tolist()
                record["history"] = "".join("1" if r else "0" for r in right)
                record["broken_at"] = right.index(False) if False in right else None
            if queries is not None:  # model calls the image paid (a decision attack's budget)
                record["queries"] = int(queries[i])
                if start_queries is not None:  # of them, spent finding a start (entries before 2026-12-05 lack it)
                    record["start_queries"] = int(start_queries[i])
                if revision is not None:
                    record["attack_revision"] = revision
                if answers is not None and int(answers[i]) >= 0:
                    # Scored by what the attack's oracle answered on this very input (what the
                    # attacker holds): an end point on the boundary can round to the other side
                    # when the defense runs again in another batch. The re-run is kept.
                    record["rescored_pred"], record["pred"] = record["pred"], int(answers[i])
            if scores is not None:  # a lone detector refuses what it flags, as the adaptive attacks assume
                flagged = bool(scores[i] >= self.defense.threshold)
                record.update(score=float(scores[i]), flagged=flagged, rejected=flagged)
            else:
                record.update(details[i])
            records.append(record)
        self.sample_log.append(records)
        self._plot_traces(run, traces, images, adversarial, defended, labels, adv_pred, indices)
        if self.examples_dir is not None and int(indices[0]) == self.first_index:
            k = self.num_examples
            examples = {"clean": images, "adversarial": adversarial, "defended": defended, "labels": labels}
            examples |= {"clean_pred": clean_pred, "adv_pred": adv_pred, "pred": pred}
            path = self.examples_dir / f"{run.id.replace('/', '_')}.pt"
            atomic_torch_save({name: t[:k].cpu() for name, t in examples.items()}, path)

    def _plot_traces(self, run: AttackRun, traces, images, adversarial, defended, labels, adv_pred, indices) -> None:
        if not traces or self.traces_dir is None:
            return
        position = {int(idx): i for i, idx in enumerate(indices.tolist())}
        for index, trace in traces.items():
            i = position[index]
            strip = {
                "adversarial" if run.name != CLEAN else "input": adversarial[i].cpu(),
                "on-boundary": trace["on_boundary"],
                "reconstructed": defended[i].cpu(),
                "clean": images[i].cpu(),
            }
            path = self.traces_dir / run.id.replace("/", "_") / f"{index}.png"
            plot_trace(path, trace, strip, int(labels[i]), int(adv_pred[i]), self.class_names)
