"""Attack, defend, measure, report: ``python evaluate.py --defense none``.

Defaults: CIFAR-10 test images (1,000 drawn at random, seeded), the shipped ResNet-20,
clean + PGD eps=8/255. Adversarial examples are cached on disk and shared by every
defense; per-image records go to ``<out>/samples.jsonl`` as they finish, so a rerun with
the same ``--out`` resumes; then results.json/csv/md and PNG plots are written.
"""

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from common.atomic_files import atomic_write_text
from common.checkpoint_io import resolve_repo_path
from common.config_files import resolve_config
from common.errors import UserError, run_main

DEFAULTS: dict[str, Any] = {
    "data": {"class_path": "datamodules.CIFAR10DataModule", "init_args": {}},
    "victim": "checkpoints/victim_cifar_resnet20.ckpt",
    "attack_victim": None,  # None: attack the victim itself; a checkpoint: transfer attacks crafted on it
    "defense": "none",
    "defense_params": {},
    "attacks": "clean,pgd",
    "threat_model": "oblivious",  # the default of attacks that have both forms; bpda_pgd & co. are adaptive
    "eps": "8",
    # PGD with 50 steps: torchattacks' default 10 leaves 5.5% of the label-smoothed ResNet-20's
    # answers right at 8/255 (1.5% with 50; README). The other attacks keep the library defaults.
    "attack_params": {"pgd": {"steps": 50}},
    "num_samples": None,  # the defense's default_num_samples: 1000, or 40 for the per-image DIP fits
    "seed": 0,
    "batch_size": 100,
    "devices": 1,
    "num_nodes": None,  # None: $SLURM_NNODES under SLURM, else 1
    "accelerator": "auto",
    "out": None,
    "cache_dir": None,
    "num_examples": 8,
    "save_traces": 0,
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with any of the options below (bare names resolve against configs/)")
    p.add_argument("--defense", help="defense name (default: none)")
    p.add_argument(
        "--attacks", help="comma list, 'clean' included, NAME(key=value,...) for parameters (default: clean,pgd)"
    )
    p.add_argument(
        "--threat-model",
        help="oblivious (crafted on the bare victim) or adaptive (through the defense) for attacks that have both "
        "forms; NAME(threat=adaptive) sets one attack (default: oblivious; bpda_pgd, eot_pgd, random_noise, latent_space are "
        "always adaptive)",
    )
    p.add_argument("--eps", help="L-inf budgets in /255 units, comma list (default: 8); values < 1 are pixel fractions")
    p.add_argument(
        "--num-samples",
        type=int,
        help="test images drawn at random; 0 for all (default: 1000; 40 for the DIP defenses, ~5 min on 2 CPU cores)",
    )
    p.add_argument("--seed", type=int, help="seed of the sample and of the attacks (default: 0)")
    p.add_argument("--devices", type=int, help="devices (GPUs or CPU processes); >1 runs DDP (default: 1)")
    p.add_argument(
        "--num-nodes", type=int, help="nodes of a multi-node run (default: $SLURM_NNODES under SLURM, else 1)"
    )
    p.add_argument("--accelerator", help="auto, cpu, gpu (default: auto)")
    p.add_argument(
        "--batch-size", type=int, help="images per chunk: one attack batch, one defense batch (default: 100)"
    )
    p.add_argument("--out", help="output folder (default: runs/<defense>)")
    p.add_argument("--victim", help="victim checkpoint (default: checkpoints/victim_cifar_resnet20.ckpt)")
    p.add_argument(
        "--attack-victim",
        help="craft the attacks on this classifier checkpoint instead of the victim (a transfer attack, "
        "e.g. paper 004's attacks on the unprotected classifier against INC with a robust one)",
    )
    p.add_argument(
        "--save-traces", type=int, help="DIP defenses: decision-trace plots for the first K images (default: 0)"
    )
    p.add_argument("--data-dir", help="override the data module's data_dir")
    p.add_argument("--download", action="store_true", help="let the data module download its data set (needs internet)")
    args = p.parse_args(argv)
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    if args.config:
        path = resolve_config(args.config)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from None
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise UserError(f"{path}: unknown key(s) {unknown}; accepted: {sorted(DEFAULTS)}")
        options.update(loaded)
    for key, value in vars(args).items():
        if value is not None and key not in ("config", "data_dir", "download"):
            options[key] = value
    if args.data_dir:
        options["data"] = {
            **options["data"],
            "init_args": {**options["data"].get("init_args", {}), "data_dir": args.data_dir},
        }
    if isinstance(options["attacks"], list):
        options["attacks"] = ",".join(options["attacks"])
    options["eps"] = str(options["eps"]) if not isinstance(options["eps"], list) else ",".join(map(str, options["eps"]))
    options["out"] = options["out"] or f"runs/{options['defense']}"
    return options


def build_datamodule(spec: dict[str, Any]):
    class_path = spec.get("class_path", "")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"data.class_path {class_path!r} is not an importable data module class") from None
    try:
        return cls(**spec.get("init_args", {}))
    except TypeError as err:
        raise UserError(f"data.init_args for {class_path}: {err}") from None


def check_out_dir(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse an --out that holds another run's records; nothing is written here."""
    existing = out / "run.json"
    if existing.is_file():
        try:
            previous = json.loads(existing.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{existing} is unreadable; delete {out} or choose another --out") from None
        differing = [k for k in manifest if k != "command" and previous.get(k) != manifest[k]]
        if differing:
            raise UserError(
                f"--out {out} holds another run's records ({', '.join(differing)} differ); "
                "choose another --out or delete that folder"
            )
    elif (out / "samples.jsonl").is_file():
        raise UserError(f"--out {out} holds samples.jsonl without run.json; choose another --out or delete that folder")


def load_victim_and_data(o: dict[str, Any]):
    """The victim, the data module and its test set, checked against each other."""
    from nets import load_classifier

    victim_path = resolve_repo_path(o["victim"])
    classifier = load_classifier(victim_path)
    dm = build_datamodule(o["data"])
    dm.setup("test")  # the test split only: prepare_data would also decode the training split
    dataset = dm.test_dataloader().dataset
    victim_classes = classifier.checkpoint_config.get("num_classes")
    data_classes = getattr(dm, "num_classes", None) or len(getattr(dataset, "classes", []) or []) or None
    if victim_classes and data_classes and victim_classes != data_classes:
        raise UserError(f"victim {victim_path} has {victim_classes} classes but the data set has {data_classes}")
    in_channels = classifier.checkpoint_config.get("in_channels")
    sample_shape = tuple(dataset[0][0].shape)
    if in_channels and sample_shape[0] != in_channels:
        raise UserError(f"victim {victim_path} takes {in_channels}-channel images; the data set's are {sample_shape}")
    return classifier, victim_path, dm, dataset, data_classes or victim_classes or 10


def load_attack_victim(path: str, victim) -> tuple[Any, Path]:
    """The classifier transfer attacks are crafted on; it must take the victim's inputs."""
    from nets import load_classifier

    attack_path = resolve_repo_path(path)
    model = load_classifier(attack_path)
    for key in ("num_classes", "in_channels", "image_size"):
        mine, theirs = model.checkpoint_config.get(key), victim.checkpoint_config.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise UserError(f"--attack-victim {attack_path} has {key}={mine}, the victim {theirs}: they must match")
    return model, attack_path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_only

    from datamodules.data_paths import cache_root
    from defenses import build_defense
    from evaluation import report
    from evaluation.adversarial_cache import AdversarialCache, file_sha256
    from evaluation.attack_specs import check_against_defense, expand_attacks, parse_eps
    from evaluation.chunks import sample_indices
    from evaluation.sample_log import SampleLog, read_records, unique_records
    from lightning_modules.robustness_eval import RobustnessEvaluation

    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    # Everything is checked before anything is written.
    if "+" in o["defense"]:  # DETECTOR+PURIFIER: each part's parameters under its own name
        parts = o["defense"].split("+")
        defense = build_defense(o["defense"], **{p: o["defense_params"][p] for p in parts if p in o["defense_params"]})
    else:
        defense = build_defense(o["defense"], **o["defense_params"].get(o["defense"], {}))
    if o["num_samples"] is None:
        o["num_samples"] = defense.default_num_samples
    if o["num_nodes"] is None:
        o["num_nodes"] = int(os.environ.get("SLURM_NNODES", "1"))
    for key, least in (("num_samples", 0), ("batch_size", 1), ("devices", 1), ("num_nodes", 1), ("save_traces", 0)):
        if not isinstance(o[key], int) or o[key] < least:
            raise UserError(f"--{key.replace('_', '-')} must be an integer >= {least}, got {o[key]!r}")
    runs = expand_attacks(o["attacks"], parse_eps(o["eps"]), o["attack_params"], o["threat_model"])
    check_against_defense(runs, defense)
    classifier, victim_path, dm, dataset, num_classes = load_victim_and_data(o)
    attack_model, attack_hash = None, None
    if o["attack_victim"]:
        attack_model, attack_path = load_attack_victim(o["attack_victim"], classifier)
        attack_hash = file_sha256(attack_path)
    indices = sample_indices(len(dataset), o["num_samples"] or None, o["seed"])
    if o["save_traces"]:
        if not hasattr(defense, "trace_indices"):
            raise UserError(f"--save-traces needs a DIP defense; {o['defense']!r} keeps no decision trace")
        defense.trace_indices = frozenset(indices[: o["save_traces"]])

    out = Path(o["out"])
    dataset_name = type(dm).__name__.removesuffix("DataModule")
    victim_hash = file_sha256(victim_path)
    manifest = {
        "victim_sha256": victim_hash,
        "dataset": dataset_name,
        "defense": o["defense"],
        "defense_params": defense.params(),
        "attacks": [{"id": r.id, "params": attack.params() if (attack := r.build()) else {}} for r in runs],
        "num_samples": len(indices),
        "seed": o["seed"],
        "command": "python evaluate.py " + " ".join(argv),
    }
    if attack_hash:  # only then, so run.json of plain runs stays as before and they resume
        manifest["attack_victim_sha256"] = attack_hash
    check_out_dir(out, manifest)
    log = SampleLog(out / "samples.jsonl")
    if rank_zero_only.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "run.json", json.dumps(manifest, indent=2) + "\n")
    # Rank 0 cuts off a line left partial by a crash before anyone appends; other ranks only read.
    done = set(unique_records(read_records(log.path, repair=rank_zero_only.rank == 0)))

    cache = AdversarialCache(Path(o["cache_dir"]) if o["cache_dir"] else cache_root() / "adversarial")
    module = RobustnessEvaluation(
        classifier, defense, runs, dataset, indices, o["batch_size"], cache,
        {"victim": attack_hash or victim_hash, "dataset": dataset_name}, log, done, o["seed"], out / "examples",
        o["num_examples"], out / "traces", getattr(dataset, "classes", None), attack_model,
        {"victim": victim_hash, "dataset": dataset_name, "threat": "adaptive", "defense": o["defense"],
         "defense_params": defense.params()},
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator=o["accelerator"],
        devices=o["devices"],
        num_nodes=o["num_nodes"],
        strategy="ddp" if o["devices"] * o["num_nodes"] > 1 else "auto",
        inference_mode=False,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module)
    if not trainer.is_global_zero:
        return []
    records = list(unique_records(read_records(log.path)).values())
    rows = report.build_rows(records, runs, num_classes)
    header = {
        "defense": o["defense"],
        "victim": str(o["victim"]),
        "victim_sha256": victim_hash,
        "dataset": dataset_name,
        "num_samples": len(indices),
        "seed": o["seed"],
        "command": manifest["command"],
        **({"attack_victim": str(o["attack_victim"]), "attack_victim_sha256": attack_hash} if attack_hash else {}),
    }
    detection = report.detection_rows(records, runs)
    worst_case = report.worst_case_rows(records, runs)
    report.write_results(out, header, rows, detection, worst_case)
    title = f"{dataset_name}, {victim_path.stem}, defense {o['defense']}"
    report.plot_accuracy_vs_eps(out, rows, title)
    report.plot_iteration_curves(out, rows, title)
    report.plot_budget_curves(out, rows, title)
    report.plot_examples(out, out / "examples", [r.id for r in runs], getattr(dataset, "classes", None))
    print(
        f"\n{dataset_name} / {victim_path.name} / defense {o['defense']} ({len(indices)} images, cache {cache.hits} hits, {cache.misses} misses)"
    )
    print(report.summary_table(rows))
    for r in worst_case:
        print(
            f"robust accuracy at eps {r['eps'] * 255:.4g}/255 ({r['threat_model']}, worst case over "
            f"{len(r['runs'])} attacks): {100 * r['accuracy']:.1f}%"
        )
    if detection:
        print(report.detection_table(detection))
    print(f"results in {out}/ (results.md, results.json, results.csv, samples.jsonl, *.png)")
    return rows


if __name__ == "__main__":
    run_main(main)
