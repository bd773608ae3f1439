"""Attack, defend, measure, report: ``python evaluate.py --defense none`` (or ``dipdef-evaluate``).

Defaults: CIFAR-10 test images (1,000 drawn at random, seeded), the shipped ResNet-20,
clean + PGD eps=8/255. Adversarial examples are cached on disk and shared by every
defense; per-image records go to ``<out>/samples.jsonl`` as they finish, so a rerun with
the same ``--out`` resumes; then results.json/csv/md and PNG plots are written.

The steps, one way: options (``dipdefense.evaluation.options``) -> the run's parts
(``evaluation_parts``) -> per-image records (``RobustnessEvaluation`` in the test loop) -> rows
(``evaluation.rows``) -> tables and figures -> files (``evaluation.results_files``).
"""

import contextlib
import errno
import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from dipdefense.common.atomic_files import atomic_write_text
from dipdefense.common.errors import UserError, run_main
from dipdefense.evaluation.options import load_options

from .evaluation_parts import build, first_chunk_accuracy


def quiet_lightning(quiet: bool = True) -> None:
    """Lightning's start-up chatter off (``--verbose`` keeps it): its INFO lines on the accelerators
    it found and a logging-service tip, and the FutureWarning its own pytree helper triggers in
    recent torch (Lightning's code, nothing a user can act on). Warnings about the user's inputs
    stay."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class Terminated(Exception):
    """SIGTERM arrived (``timeout``, SLURM preemption, ``scancel``): stop now, keep the records."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def run(o: dict[str, Any], plan: SimpleNamespace) -> None:
    """Attack and defend every image without a record; records are appended as chunks end."""
    from lightning.pytorch.utilities import rank_zero_only

    from dipdefense.common.data_paths import cache_root
    from dipdefense.evaluation.adversarial_cache import AdversarialCache
    from dipdefense.evaluation.run_folder import remove_stale_temporaries

    from .robustness_eval import RobustnessEvaluation

    out = plan.out
    if rank_zero_only.rank == 0:
        removed = remove_stale_temporaries(out)
        if removed:
            print(f"removed {len(removed)} temporary file(s) a killed run left in {out}", file=sys.stderr)
        atomic_write_text(out / "run.json", json.dumps(plan.manifest, indent=2) + "\n")
    plan.cache = AdversarialCache(Path(o["cache_dir"]) if o["cache_dir"] else cache_root() / "adversarial")
    defense, dataset_name = plan.defense, plan.dataset_name
    module = RobustnessEvaluation(
        plan.classifier, defense, plan.runs, plan.dataset, plan.indices, o["batch_size"], plan.cache,
        {"victim": plan.attack_hash or plan.victim_hash, "dataset": dataset_name}, out, o["seed"],
        out / "examples", o["num_examples"], out / "traces", getattr(plan.dataset, "classes", None),
        plan.attack_model,
        {"victim": plan.victim_hash, "dataset": dataset_name, "threat": "adaptive", "defense": o["defense"],
         "defense_params": defense.params()},
        plan.manifest["attack_rng"],
    )  # fmt: skip
    plan.trainer.test(module)


def write_report(o: dict[str, Any], plan: SimpleNamespace) -> list[dict[str, Any]]:
    """Records -> rows -> results files and figures -> the summary printed: results.json/csv/md
    and the PNG plots, from the records of this run's own sample."""
    from dipdefense.evaluation import figures, tables
    from dipdefense.evaluation import rows as row_builders
    from dipdefense.evaluation.results_files import write_results
    from dipdefense.evaluation.sample_log import finished_records
    from dipdefense.evaluation.survivors import cascade_summary

    out, runs = plan.out, plan.runs
    records, complete = finished_records(out, plan.indices, {r.id for r in runs})
    if not complete:
        raise UserError(f"{out} holds no image that every attack has finished yet; nothing to report")
    rows = row_builders.build_rows(records, runs, plan.num_classes)
    detection = row_builders.detection_rows(records, runs)
    worst_case = row_builders.worst_case_rows(records, runs)
    header = run_header(o, plan, complete)
    if plan.cascade:
        header["survivors_of"] = cascade_summary(**plan.cascade, records=records)
    write_results(out, header, rows, detection, worst_case)
    title = f"{plan.dataset_name}, {Path(plan.victim_name).stem}, defense {o['defense']}"
    figures.plot_accuracy_vs_eps(out, rows, title)
    figures.plot_iteration_curves(out, rows, title)
    figures.plot_budget_curves(out, rows, title)
    figures.plot_examples(out, out / "examples", [r.id for r in runs], getattr(plan.dataset, "classes", None))
    cache = getattr(plan, "cache", None)  # absent with --report_only
    print(
        f"\n{plan.dataset_name} / {plan.victim_name} / defense {o['defense']} ({len(plan.indices)} images"
        + (f", cache {cache.hits} hits, {cache.misses} misses)" if cache else ")")
    )
    if complete < len(plan.indices):
        print(f"partial: {complete} of {len(plan.indices)} images have a record of every attack")
    print(tables.summary_table(rows))
    for r in worst_case:
        print(
            f"robust accuracy at eps {r['eps'] * 255:.4g}/255 ({r['threat_model']}, worst case over "
            f"{len(r['runs'])} attacks): {100 * r['accuracy']:.1f}%"
        )
    if plan.cascade:
        print(tables.cascade_line(header["survivors_of"]).strip())
    if detection:
        print(tables.detection_table(detection))
    print(f"results in {out}/ (results.md, results.json, results.csv, samples.jsonl, *.png)")
    return rows


def run_header(o: dict[str, Any], plan: SimpleNamespace, complete: int) -> dict[str, Any]:
    """results.json's fields above the rows: what was run, on what, and how to run it again."""
    return {
        "defense": o["defense"],
        "victim": str(o["victim"]),
        "victim_sha256": plan.manifest["victim_sha256"],
        **({"victim_options": o["victim_options"]} if o["victim_options"] else {}),
        "dataset": plan.dataset_name,
        "num_samples": len(plan.indices),
        **({"complete_images": complete} if complete < len(plan.indices) else {}),
        "seed": o["seed"],
        "command": plan.manifest["command"],
        **(
            {"attack_victim": str(o["attack_victim"]), "attack_victim_sha256": plan.attack_hash}
            if plan.attack_hash
            else {}
        ),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from lightning.pytorch.utilities import rank_zero_only

    from dipdefense.evaluation.run_folder import OutputLock

    argv = sys.argv[1:] if argv is None else argv
    o = load_options(argv)
    quiet_lightning(not o["verbose"])
    if o.pop("print_config"):
        print(yaml.safe_dump(o, sort_keys=False), end="")
        return []
    plan = build(o, argv)
    out = plan.out
    if not o["report_only"] and rank_zero_only.rank == 0:
        attacks = ", ".join(f"{r.id} ({r.threat})" if r.name != "clean" else r.id for r in plan.runs)
        print(
            f"plan: defense {o['defense']} on {len(plan.indices)} images; {attacks}; results in {out}/", file=sys.stderr
        )
        for note in plan.manifest.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
        print(first_chunk_accuracy(plan, o["batch_size"]), file=sys.stderr)
    if o["report_only"] and not (out / "run.json").is_file():
        raise UserError(f"--report_only: {out} holds no run yet; run the same command without it first")
    lock = OutputLock(out) if rank_zero_only.rank == 0 else contextlib.nullcontext()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # Lightning's own handler calls this one too
    try:
        try:
            if rank_zero_only.rank == 0:
                out.mkdir(parents=True, exist_ok=True)
            with lock:
                if o["report_only"]:
                    return write_report(o, plan)
                run(o, plan)
                if not plan.trainer.is_global_zero:
                    return []
                return write_report(o, plan)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EPERM):
                raise
            raise UserError(
                f"cannot write the run's files in {out}: {err.strerror} ({err.filename or out}); "
                "free space or choose another --out (records written so far are kept)"
            ) from None
    except Terminated:
        print(
            f"stopped by SIGTERM; the records finished so far are in {out}/samples*.jsonl: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``dipdef-evaluate`` console script."""
    run_main(main)
