"""evaluate.py's options: the defaults, the parser, a ``--config`` YAML and ``--KEY.SUB VALUE``
overrides merged over them, and every value's type checked, with one error naming the option and
what it accepts. Pure: argv in, one dictionary out.
"""

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from dipdefense.common.config_files import resolve_config
from dipdefense.common.errors import UserError

DEFAULTS: dict[str, Any] = {
    "data": {"class_path": "CIFAR10DataModule", "init_args": {}},
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
    # An earlier run's folder: attack only the images it left right (AutoAttack's cascade across runs)
    "survivors_of": None,
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
    _flag(
        p,
        "survivors_of",
        help="an earlier run's --out folder (same victim and defense): attack only the images it left right "
        "under every attack, in its order (--num-samples N: the first N of them); the per-image worst case "
        "over both runs is then that of running every attack on every image",
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
    path_keys = ("attack_victim", "out", "cache_dir", "victim_weights", "victim_dir", "attack_victim_weights")
    for key in (*path_keys, "survivors_of"):
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
        "a mapping {class_path: NAME, init_args: {...}} (NAME: a class of datamodules)",
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
