"""The parts of an evaluation, built from its options and checked before anything is written:
the data and its seeded sample, the victim (and the model attacks are crafted on), the defense,
the attack runs, the output folder's manifest and the Trainer.
"""

import hashlib
import inspect
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dipdefense.common.errors import CheckpointError, UserError

from .config_classes import datamodule_class, datamodules_package


def _downloads(cls: type) -> bool:
    try:
        return "download" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def build_datamodule(spec: dict[str, Any]):
    class_path = spec.get("class_path", "")
    try:
        cls = datamodule_class(class_path)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"data.class_path {class_path!r} is not an importable data module class") from None
    init_args = spec.get("init_args", {})
    if init_args.get("download") and not _downloads(cls):
        can = sorted(n for n, c in vars(datamodules_package()).items() if isinstance(c, type) and _downloads(c))
        raise UserError(
            f"--download: {cls.__name__} cannot download its data set; put it where data.init_args.data_dir "
            f"points. Data modules that download: {', '.join(can)}"
        )
    try:
        return cls(**init_args)
    except TypeError as err:
        raise UserError(f"data.init_args for {class_path}: {err}") from None


def load_victim_and_data(o: dict[str, Any]):
    """The victim (any kind of ``nets.victims``), the data module and its test set, checked
    against each other: the victim runs on the data's images and gives one logit per class."""
    dm = build_datamodule(o["data"])
    dm.setup("test")  # the test split only: prepare_data would also decode the training split
    dataset = dm.test_dataloader().dataset
    data_classes = getattr(dm, "num_classes", None) or len(getattr(dataset, "classes", []) or []) or None
    sample_shape = tuple(dataset[0][0].shape)
    classifier = _load_checked(
        o["victim"], o["victim_weights"], o["victim_normalize"], o, data_classes, sample_shape, "victim"
    )
    num_classes = data_classes or getattr(classifier, "checkpoint_config", {}).get("num_classes") or 10
    return classifier, dm, dataset, num_classes


def _load_checked(spec, weights, normalize, o, data_classes, sample_shape, role: str):
    """A victim spec loaded and its input contract checked; ``role`` names the option in errors."""
    from dipdefense.nets.victims import check_input_contract, load_victim

    options = o["victim_options"] if role == "victim" else None
    try:
        model = load_victim(
            spec, weights, normalize, data_classes or 10, sample_shape[0], o["victim_dir"], o["download"], options
        )
    except CheckpointError as err:
        if role == "victim" and o["victim_options"]:
            raise UserError(f"--victim_options {o['victim_options']}: {err}") from None
        raise
    config = getattr(model, "checkpoint_config", {})
    name = f"--{role.replace('_', '-')} {spec}"
    victim_classes, in_channels = config.get("num_classes"), config.get("in_channels")
    if victim_classes and data_classes and victim_classes != data_classes:
        raise UserError(f"{name} has {victim_classes} classes but the data set has {data_classes}")
    if in_channels and sample_shape[0] != in_channels:
        raise UserError(f"{name} takes {in_channels}-channel images; the data set's are {sample_shape}")
    check_input_contract(model, sample_shape, data_classes or victim_classes or 10, name)
    if getattr(model, "was_training", False):
        print(f"{name} was in training mode; it is evaluated in eval mode", file=sys.stderr)
    return model


def first_chunk_accuracy(plan: SimpleNamespace, batch_size: int) -> str:
    """The plan's line on the bare victim's accuracy over the first chunk of the sample (up to 100
    images): a model wired wrongly (normalisation, weights, class order) shows at once."""
    import torch

    rows = plan.indices[: min(batch_size, 100)]
    device = next((q.device for q in plan.classifier.parameters()), torch.device("cpu"))
    # A costly victim (airbench94's six test-time views: 1.9 s for 100 images on 2 cores) is
    # checked on as many images as about half a second allows, never fewer than 20.
    right, seen, start = 0, 0, time.perf_counter()
    for first in range(0, len(rows), 20):
        part = rows[first : first + 20]
        images = torch.stack([plan.dataset[i][0] for i in part])
        labels = torch.tensor([int(plan.dataset[i][1]) for i in part])
        with torch.no_grad():
            right += int((plan.classifier(images.to(device)).argmax(1).cpu() == labels).sum())
        seen += len(part)
        if time.perf_counter() - start > 0.5:
            break
    right /= seen
    line = f"victim {plan.victim_name}: {100 * right:.1f}% right on the first {seen} images, undefended"
    chance = 1 / plan.num_classes
    if right <= 1.5 * chance:
        line += (
            f": about chance ({100 * chance:.0f}% on {plan.num_classes} classes); is it wired right "
            "(its normalisation, weights, class order)?"
        )
    return line


def _display_name(spec: str) -> str:
    """A checkpoint's file name, another kind's spec."""
    from dipdefense.nets.victims import victim_kind

    return Path(spec).name if victim_kind(spec) == "checkpoint" else spec


def build_trainer(o: dict[str, Any]):
    """The Trainer, built (and so checked) before anything is written."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return pl.Trainer(
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
    except (ValueError, MisconfigurationException, RuntimeError) as err:
        raise UserError(
            f"--accelerator {o['accelerator']} --devices {o['devices']} --num_nodes {o['num_nodes']}: {err}"
        ) from None


def sample_sha256(dataset: Any, indices: list[int]) -> str:
    """A hash of the sampled images (as 8-bit pixels) and labels, in sample order."""

    import torch

    digest = hashlib.sha256()
    for index in indices:
        image, label = dataset[index]
        digest.update(image.mul(255).round().to(torch.uint8).numpy().tobytes())
        digest.update(int(label).to_bytes(8, "little", signed=True))
    return digest.hexdigest()


def build(o: dict[str, Any], argv: list[str]) -> SimpleNamespace:
    """Everything the run needs, every input checked; nothing is written here."""
    from dipdefense.defenses import build_defense
    from dipdefense.evaluation.attack_specs import check_against_defense, expand_attacks, parse_eps
    from dipdefense.evaluation.chunks import sample_indices
    from dipdefense.evaluation.run_folder import check_out_dir, inherited_attack_rng
    from dipdefense.evaluation.survivors import survivor_indices

    if "+" in o["defense"]:  # DETECTOR+PURIFIER: each part's parameters under its own name
        parts = o["defense"].split("+")
        defense = build_defense(o["defense"], **{p: o["defense_params"][p] for p in parts if p in o["defense_params"]})
    else:
        defense = build_defense(o["defense"], **o["defense_params"].get(o["defense"], {}))
    chosen_samples = o["num_samples"] is not None
    if not chosen_samples:
        o["num_samples"] = defense.default_num_samples
    if o["num_nodes"] is None:
        o["num_nodes"] = int(os.environ.get("SLURM_NNODES", "1"))
    runs = expand_attacks(o["attacks"], parse_eps(o["eps"]), o["attack_params"], o["threat_model"])
    check_against_defense(runs, defense)
    trainer = build_trainer(o)
    classifier, dm, dataset, num_classes = load_victim_and_data(o)
    attack_model, attack_hash = None, None
    if o["attack_victim"]:
        shape, data_classes = tuple(dataset[0][0].shape), getattr(dm, "num_classes", None)
        attack_model = _load_checked(
            o["attack_victim"], o["attack_victim_weights"], o["attack_victim_normalize"], o, data_classes, shape,
            "attack_victim",
        )  # fmt: skip
        attack_hash = attack_model.victim_source.sha256
    try:
        defense.check_images(tuple(dataset[0][0].shape))
    except ValueError as err:
        raise UserError(f"--defense {o['defense']}: {err}") from None
    if o["num_samples"] > len(dataset) and chosen_samples:  # the defense's default takes what there is
        raise UserError(f"--num_samples {o['num_samples']}: the test set has {len(dataset)} images; 0 takes them all")
    indices = sample_indices(len(dataset), o["num_samples"] or None, o["seed"])
    out = Path(o["out"] or f"runs/{o['defense']}")
    dataset_name = type(dm).__name__.removesuffix("DataModule")
    source = classifier.victim_source
    victim_hash = source.sha256  # a checkpoint's file hash, as before; another kind's loaded weights
    manifest = {
        "victim_sha256": victim_hash,
        **({"victim_source": source.manifest()} if source.kind != "checkpoint" else {}),
        # Only when set, so that the manifests of runs without options stay as they were and resume.
        **({"victim_options": o["victim_options"]} if o["victim_options"] else {}),
        "dataset": dataset_name,
        "defense": o["defense"],
        "defense_params": defense.params(),
        "attacks": [{"id": r.id, "params": attack.params() if (attack := r.build()) else {}} for r in runs],
        "num_samples": len(indices),
        "seed": o["seed"],
        # The chunk is one attack and one defense batch: an attack that draws on subsets of it
        # (Square, HopSkipJump) and the victim's batched rounding still depend on it.
        "batch_size": o["batch_size"],
        # Random starts per image; a run begun before that resumes with per-chunk draws.
        "attack_rng": inherited_attack_rng(out),
        # What the sample's images are, wherever the data set is read from.
        "sample_sha256": None,  # below, once the sample is final (--survivors_of replaces it)
        "command": "python evaluate.py " + " ".join(argv),
    }
    if attack_hash:  # only then, so run.json of plain runs stays as before and they resume
        manifest["attack_victim_sha256"] = attack_hash
    cascade = None
    if o["survivors_of"]:  # the cascade: only what an earlier run of this defended victim left right
        survivors, parent_images = survivor_indices(Path(o["survivors_of"]), manifest)
        indices = survivors[: o["num_samples"]] if chosen_samples and o["num_samples"] else survivors
        if not indices:
            raise UserError(f"--survivors-of {o['survivors_of']}: that run left no image right; nothing to attack")
        manifest |= {"num_samples": len(indices), "survivors_of": o["survivors_of"]}
        # every survivor, so that those --num_samples leaves out count as unfinished (an upper bound)
        cascade = {"run": o["survivors_of"], "parent_images": parent_images, "survivors": len(survivors)}
    manifest["sample_sha256"] = sample_sha256(dataset, indices)
    if o["save_traces"]:
        if not hasattr(defense, "trace_indices"):
            raise UserError(f"--save-traces needs a DIP defense; {o['defense']!r} keeps no decision trace")
        defense.trace_indices = frozenset(indices[: o["save_traces"]])
    notes = defense.device_notes(trainer.strategy.root_device.type)  # the device Lightning resolved
    if notes:  # what a speed option does here (or that it does nothing); not compared on resume
        manifest["notes"] = notes
    victim_hash = source.function_sha256  # with options, another function of the same weights
    grown_from = check_out_dir(out, manifest, lambda n: sample_sha256(dataset, indices[:n]), indices)
    if grown_from is not None:
        print(f"{out}: growing the run from {grown_from} to {len(indices)} images", file=sys.stderr)
    return SimpleNamespace(
        defense=defense, runs=runs, trainer=trainer, classifier=classifier, victim_name=_display_name(o["victim"]),
        victim_hash=victim_hash, dataset=dataset, dataset_name=dataset_name, num_classes=num_classes,
        attack_model=attack_model, attack_hash=attack_hash, indices=indices, out=out, manifest=manifest,
        cascade=cascade,
    )  # fmt: skip
