"""Attack, defend, measure, report: ``python evaluate.py --defense none`` (or ``dipdef-evaluate``).

Defaults: CIFAR-10 test images (1,000 drawn at random, seeded), the shipped ResNet-20,
clean + PGD eps=8/255. Adversarial examples are cached on disk and shared by every
defense; per-image records go to ``<out>/samples.jsonl`` as they finish, so a rerun with
the same ``--out`` resumes; then results.json/csv/md and PNG plots are written.
"""

import argparse
import contextlib
import copy
import errno
import hashlib
import importlib
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from dipdefense.common.atomic_files import atomic_write_text
from dipdefense.common.config_files import resolve_config
from dipdefense.common.errors import CheckpointError, UserError, run_main

DEFAULTS: dict[str, Any] = {
    "data": {"class_path": "dipdefense.datamodules.CIFAR10DataModule", "init_args": {}},
    # A victim spec (nets.victims): a project checkpoint, module:function, file.py:function,
    # timm:NAME, torchvision:NAME or robustbench:[THREAT/]NAME.
    "victim": "checkpoints/victim_cifar_resnet20.ckpt",
    "victim_weights": None,  # a state dict for the callable, timm and torchvision kinds
    "victim_normalize": None,  # a data set name or [mean, std]: normalisation put in front of the victim
    "victim_dir": None,  # RobustBench's model directory (None: $DIPDEF_ROBUSTBENCH, else ~/.cache/dipdefense/robustbench)
    "attack_victim": None,  # None: attack the victim itself; a spec: transfer attacks crafted on that model
    "attack_victim_weights": None,
    "attack_victim_normalize": None,
    "victim_options": {},  # the victim architecture's own options over its checkpoint's, e.g. {tta_level: 0}
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
    "download": False,  # let the data module fetch its data set when it is missing
    # Write results from the records already in --out and stop: interim figures of a long or
    # killed run, over the images every attack has finished.
    "report_only": False,
    # Lightning's start-up lines (accelerators found, a logging-service tip) and its pytree
    # deprecation warning: shown only when asked for.
    "verbose": False,
}


# Options that hold a mapping: a config file or ``--KEY.SUB.SUB VALUE`` sets one entry and keeps
# the others (``--attack_params.pgd.steps 10``, ``--defense_params.dip_stitch.t0 100``,
# ``--data.data_dir DIR``, which is short for ``--data.init_args.data_dir DIR`` as in train.py).
NESTED = ("data", "defense_params", "attack_params", "victim_options")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """``--num_samples`` (train.py's LightningCLI style) and ``--num-samples`` alike."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name, **kwargs)


def _normalize_arg(text: str) -> str | list[list[float]]:
    """A data set name, or 'MEAN,MEAN,MEAN/STD,STD,STD'."""
    if "/" not in text:
        return text
    try:
        return [[float(v) for v in part.split(",")] for part in text.split("/")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a data set name or MEAN,MEAN,MEAN/STD,STD,STD") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(p, "config", help="YAML with any of the options below (bare names resolve against configs/)")
    _flag(p, "print_config", action="store_true", help="print the merged options as YAML (a config file) and stop")
    _flag(
        p,
        "defense",
        help="defense name, NAME(key=value,...) for its parameters, DETECTOR+PURIFIER for a gated pair (default: none)",
    )
    _flag(p, "attacks", help="comma list, 'clean' included, NAME(key=value,...) for parameters (default: clean,pgd)")
    _flag(
        p,
        "threat_model",
        help="oblivious (crafted on the bare victim) or adaptive (through the defense) for attacks that have both "
        "forms; NAME(threat=adaptive) sets one attack (default: oblivious; bpda_pgd, eot_pgd, random_noise, "
        "latent_space are always adaptive)",
    )
    _flag(p, "eps", help="L-inf budgets in /255 units, comma list (default: 8); values < 1 are pixel fractions")
    _flag(
        p,
        "num_samples",
        type=int,
        help="test images drawn at random; 0 for all (default: 1000; 40 for the DIP defenses, ~5 min on 2 CPU cores)",
    )
    _flag(p, "seed", type=int, help="seed of the sample and of the attacks (default: 0)")
    _flag(p, "devices", type=int, help="devices (GPUs or CPU processes); >1 runs DDP (default: 1)")
    _flag(p, "num_nodes", type=int, help="nodes of a multi-node run (default: $SLURM_NNODES under SLURM, else 1)")
    _flag(p, "accelerator", help="auto, cpu, gpu (default: auto)")
    _flag(p, "batch_size", type=int, help="images per chunk: one attack batch, one defense batch (default: 100)")
    _flag(p, "out", help="output folder (default: runs/<defense>)")
    _flag(
        p,
        "victim",
        help="the victim: a project checkpoint (default: checkpoints/victim_cifar_resnet20.ckpt), "
        "module.path:function or path/to/file.py:function (returns an nn.Module on [0, 1] images), "
        "timm:NAME or torchvision:NAME (with --victim-weights), robustbench:NAME or robustbench:L2/NAME",
    )
    _flag(
        p,
        "victim_weights",
        help="a state dict file (or a dict holding one under state_dict / model) for the callable, timm and "
        "torchvision kinds, loaded with weights_only and strictly",
    )
    _flag(
        p,
        "victim_normalize",
        type=_normalize_arg,
        help="normalisation put in front of the victim: a data set name (cifar10, imagenet, ...) or "
        "'MEAN,MEAN,MEAN/STD,STD,STD' (default: none; project checkpoints normalise themselves)",
    )
    _flag(p, "victim_dir", help="RobustBench's model directory (default: $DIPDEF_ROBUSTBENCH, else ~/.cache/...)")
    _flag(
        p,
        "victim_options",
        help="the victim architecture's options over its checkpoint's, as a mapping or one entry at a time: "
        "--victim_options.tta_level 0 (airbench94 without its test-time augmentation)",
    )
    _flag(
        p,
        "attack_victim",
        help="craft the attacks on this classifier (a victim spec) instead of the victim (a transfer attack, "
        "e.g. paper 004's attacks on the unprotected classifier against INC with a robust one)",
    )
    _flag(p, "attack_victim_weights", help="--victim-weights for --attack-victim")
    _flag(p, "attack_victim_normalize", type=_normalize_arg, help="--victim-normalize for --attack-victim")
    _flag(p, "save_traces", type=int, help="DIP defenses: decision-trace plots for the first K images (default: 0)")
    _flag(p, "data_dir", help="the data module's data_dir (short for --data.init_args.data_dir)")
    _flag(
        p,
        "download",
        action="store_true",
        default=None,
        help="let the data module download its data set when it is missing (needs internet)",
    )
    _flag(
        p,
        "report_only",
        action="store_true",
        default=None,
        help="write results/plots from the records already in --out (the same command's run) and stop, over the "
        "images every attack has finished: interim figures of a stopped or killed run",
    )
    _flag(
        p,
        "verbose",
        action="store_true",
        default=None,
        help="show Lightning's start-up lines and its dependency warnings (default: only the project's output)",
    )
    p.epilog = (
        "Mappings are set one entry at a time, keeping the other defaults: --attack_params.pgd.steps 10, "
        "--defense_params.dip_stitch.t0 100, --data.data_dir DIR, --data.class_path MNISTDataModule."
    )
    return p


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, mappings merged key by key (a config that sets
    ``attack_params.cw`` keeps the default ``attack_params.pgd``)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted_overrides(rest: list[str]) -> dict[str, Any]:
    """``["--defense_params.dip_stitch.t0", "100", "--data.data_dir=X"]`` -> nested options."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        key, sep, value = arg.removeprefix("--").partition("=")
        path = key.replace("-", "_").split(".")
        if not arg.startswith("--") or len(path) < 2 or path[0] not in NESTED or not all(path):
            raise UserError(
                f"unrecognised argument {arg!r}; options are listed by --help, mappings are set as "
                f"--KEY.SUB VALUE with KEY one of {', '.join(NESTED)}"
            )
        if not sep:
            if i + 1 >= len(rest):
                raise UserError(f"{arg} needs a value")
            i, value = i + 1, rest[i + 1]
        i += 1
        if path[0] == "data" and path[1] not in ("class_path", "init_args"):
            path = ["data", "init_args", *path[1:]]
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{arg}: cannot read the value {value!r}") from None
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parsed
    return overrides


def _inline_defense(options: dict[str, Any]) -> None:
    """``defense: "glow_gate+dip_stitch(t0=100)"`` -> the bare name, its parameters under
    ``defense_params`` (over the config's)."""
    from dipdefense.evaluation.attack_specs import parse_call

    if not isinstance(options["defense"], str) or "(" not in options["defense"]:
        return
    names = []
    for part in options["defense"].split("+"):
        name, params, _ = parse_call(part, "--defense")
        names.append(name)
        if params:
            options["defense_params"] = deep_merge(options["defense_params"], {name: params})
    options["defense"] = "+".join(names)


def check_option_types(o: dict[str, Any]) -> None:
    """One clear error for an option of the wrong type, wherever it was set."""

    def require(key: str, ok: bool, accepted: str) -> None:
        if not ok:
            raise UserError(f"option {key}: {o[key]!r} is not accepted; it must be {accepted}")

    def is_int(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    for key in ("victim", "defense", "threat_model", "accelerator"):
        require(key, isinstance(o[key], str) and bool(o[key]), "a non-empty string")
    for key in ("attack_victim", "out", "cache_dir", "victim_weights", "victim_dir", "attack_victim_weights"):
        require(key, o[key] is None or (isinstance(o[key], str) and bool(o[key])), "a path or null")
    for key, least in (("seed", 0), ("num_examples", 0), ("save_traces", 0), ("batch_size", 1), ("devices", 1)):
        require(key, is_int(o[key], least), f"an integer >= {least}")
    for key, least in (("num_samples", 0), ("num_nodes", 1)):
        require(key, o[key] is None or is_int(o[key], least), f"an integer >= {least}, or null for the default")
    for key in ("download", "report_only", "verbose"):
        require(key, isinstance(o[key], bool), "true or false")
    attacks = o["attacks"]
    require(
        "attacks",
        isinstance(attacks, str) or (isinstance(attacks, list) and all(isinstance(a, str) for a in attacks)),
        "a comma list or a list of attack names",
    )
    numbers = (str, int, float)
    eps = o["eps"]
    require(
        "eps",
        (isinstance(eps, numbers) and not isinstance(eps, bool))
        or (isinstance(eps, list) and all(isinstance(e, numbers) and not isinstance(e, bool) for e in eps)),
        "a number, a comma list or a list of numbers (/255 units)",
    )
    data = o["data"]
    require(
        "data",
        isinstance(data, dict)
        and set(data) <= {"class_path", "init_args"}
        and isinstance(data.get("class_path"), str)
        and isinstance(data.get("init_args", {}), dict),
        "a mapping {class_path: dipdefense.datamodules.NAME, init_args: {...}}",
    )
    for key in ("victim_normalize", "attack_victim_normalize"):
        value = o[key]
        require(
            key,
            value is None
            or isinstance(value, str)
            or (isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value)),
            "a data set name or [mean list, std list]",
        )
    require(
        "victim_options",
        isinstance(o["victim_options"], dict) and all(isinstance(k, str) for k in o["victim_options"]),
        "a mapping of the victim architecture's options, e.g. {tta_level: 0}",
    )
    for key in ("defense_params", "attack_params"):
        value = o[key]
        require(
            key,
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()),
            "a mapping from a name to that one's parameters, e.g. {pgd: {steps: 50}}",
        )


def load_options(argv: list[str]) -> dict[str, Any]:
    """DEFAULTS, then the config file, then the command line, merged key by key and checked."""
    args, rest = build_parser().parse_known_args(argv)
    options = copy.deepcopy(DEFAULTS)
    if args.config:
        path = resolve_config(args.config)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path} must hold a mapping of options; accepted keys: {sorted(DEFAULTS)}")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise UserError(f"{path}: unknown key(s) {unknown}; accepted: {sorted(DEFAULTS)}")
        options = deep_merge(options, loaded)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "print_config", "data_dir")}
    options = deep_merge(options, given)
    if args.data_dir:
        options = deep_merge(options, {"data": {"init_args": {"data_dir": args.data_dir}}})
    options = deep_merge(options, _dotted_overrides(rest))
    check_option_types(options)
    _inline_defense(options)
    if options["download"]:
        options = deep_merge(options, {"data": {"init_args": {"download": True}}})
    if isinstance(options["attacks"], list):
        options["attacks"] = ",".join(options["attacks"])
    eps = options["eps"]
    options["eps"] = ",".join(map(str, eps)) if isinstance(eps, list) else str(eps)
    options["print_config"] = args.print_config
    return options


def _downloads(cls: type) -> bool:
    try:
        return "download" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def build_datamodule(spec: dict[str, Any]):
    class_path = spec.get("class_path", "")
    module_name, _, class_name = class_path.rpartition(".")
    # a bare class name, or the module path from before the dipdefense prefix: the project's own
    if module_name in ("", "datamodules"):
        module_name = "dipdefense.datamodules"
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"data.class_path {class_path!r} is not an importable data module class") from None
    init_args = spec.get("init_args", {})
    if init_args.get("download") and not _downloads(cls):
        from dipdefense import datamodules

        can = sorted(n for n, c in vars(datamodules).items() if isinstance(c, type) and _downloads(c))
        raise UserError(
            f"--download: {class_name} cannot download its data set; put it where data.init_args.data_dir "
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


class Terminated(Exception):
    """SIGTERM arrived (``timeout``, SLURM preemption, ``scancel``): stop now, keep the records."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


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
    if o["save_traces"]:
        if not hasattr(defense, "trace_indices"):
            raise UserError(f"--save-traces needs a DIP defense; {o['defense']!r} keeps no decision trace")
        defense.trace_indices = frozenset(indices[: o["save_traces"]])
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
        "sample_sha256": sample_sha256(dataset, indices),
        "command": "python evaluate.py " + " ".join(argv),
    }
    if attack_hash:  # only then, so run.json of plain runs stays as before and they resume
        manifest["attack_victim_sha256"] = attack_hash
    notes = defense.device_notes(trainer.strategy.root_device.type)  # the device Lightning resolved
    if notes:  # what a speed option does here (or that it does nothing); not compared on resume
        manifest["notes"] = notes
    victim_hash = source.function_sha256  # with options, another function of the same weights
    grown_from = check_out_dir(out, manifest, lambda n: sample_sha256(dataset, indices[:n]))
    if grown_from is not None:
        print(f"{out}: growing the run from {grown_from} to {len(indices)} images", file=sys.stderr)
    return SimpleNamespace(
        defense=defense, runs=runs, trainer=trainer, classifier=classifier, victim_name=_display_name(o["victim"]),
        victim_hash=victim_hash, dataset=dataset, dataset_name=dataset_name, num_classes=num_classes,
        attack_model=attack_model, attack_hash=attack_hash, indices=indices, out=out, manifest=manifest,
    )  # fmt: skip


def run(o: dict[str, Any], plan: SimpleNamespace) -> None:
    """Attack and defend every image without a record; records are appended as chunks end."""
    from lightning.pytorch.utilities import rank_zero_only

    from dipdefense.datamodules.data_paths import cache_root
    from dipdefense.evaluation.adversarial_cache import AdversarialCache
    from dipdefense.evaluation.run_folder import remove_stale_temporaries
    from dipdefense.lightning_modules.robustness_eval import RobustnessEvaluation

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
    """results.json/csv/md and the plots, from the records of this run's own sample."""
    from dipdefense.evaluation import report
    from dipdefense.evaluation.sample_log import merge_rank_logs, read_run_records, unique_records

    out, runs = plan.out, plan.runs
    merge_rank_logs(out)
    wanted, run_ids = set(plan.indices), {r.id for r in runs}
    records = [
        r for r in unique_records(read_run_records(out)).values() if r["index"] in wanted and r["attack"] in run_ids
    ]
    # Only images every attack has finished, so that every row and the worst case cover the same
    # images (all of them once a run ends; a --report_only of a killed run, the finished ones).
    done_by: dict[int, set[str]] = {}
    for r in records:
        done_by.setdefault(r["index"], set()).add(r["attack"])
    complete = {i for i, attacks in done_by.items() if attacks == run_ids}
    if not complete:
        raise UserError(f"{out} holds no image that every attack has finished yet; nothing to report")
    records = [r for r in records if r["index"] in complete]
    rows = report.build_rows(records, runs, plan.num_classes)
    header = {
        "defense": o["defense"],
        "victim": str(o["victim"]),
        "victim_sha256": plan.manifest["victim_sha256"],
        **({"victim_options": o["victim_options"]} if o["victim_options"] else {}),
        "dataset": plan.dataset_name,
        "num_samples": len(plan.indices),
        **({"complete_images": len(complete)} if len(complete) < len(plan.indices) else {}),
        "seed": o["seed"],
        "command": plan.manifest["command"],
        **(
            {"attack_victim": str(o["attack_victim"]), "attack_victim_sha256": plan.attack_hash}
            if plan.attack_hash
            else {}
        ),
    }
    detection = report.detection_rows(records, runs)
    worst_case = report.worst_case_rows(records, runs)
    report.write_results(out, header, rows, detection, worst_case)
    title = f"{plan.dataset_name}, {Path(plan.victim_name).stem}, defense {o['defense']}"
    report.plot_accuracy_vs_eps(out, rows, title)
    report.plot_iteration_curves(out, rows, title)
    report.plot_budget_curves(out, rows, title)
    classes = getattr(plan.dataset, "classes", None)
    report.plot_examples(out, out / "examples", [r.id for r in runs], classes)
    cache = getattr(plan, "cache", None)  # absent with --report_only
    print(
        f"\n{plan.dataset_name} / {plan.victim_name} / defense {o['defense']} ({len(plan.indices)} images"
        + (f", cache {cache.hits} hits, {cache.misses} misses)" if cache else ")")
    )
    if len(complete) < len(plan.indices):
        print(f"partial: {len(complete)} of {len(plan.indices)} images have a record of every attack")
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
