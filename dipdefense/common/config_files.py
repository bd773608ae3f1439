"""Config files by bare name: ``--config victim_cifar.yaml`` finds ``configs/victim_cifar.yaml``."""

from pathlib import Path

from dipdefense.common.assets import asset_dir
from dipdefense.common.errors import UserError

CONFIG_DIR = asset_dir("configs")


def resolve_config(name: str) -> str:
    """``name`` itself when it is a file, else ``configs/name`` (``.yaml`` optional); an
    unknown name is a :class:`UserError` listing the shipped configs."""
    if Path(name).is_file():
        return name
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    known = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise UserError(f"config {name!r} is neither a file nor a name in {CONFIG_DIR}; known configs: {known}")


def resolve_config_args(argv: list[str]) -> list[str]:
    """Apply :func:`resolve_config` to every ``--config NAME``, ``--config=NAME``, ``-c NAME``
    and ``-c=NAME`` (LightningCLI's short form)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            flag, _, name = arg.partition("=")
            out[i] = f"{flag}={resolve_config(name)}"
    return out
