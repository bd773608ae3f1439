"""The classes a config names, found alike in a checkout and in an installed copy.

In a checkout the design card's ``lightning_modules/`` and ``datamodules/`` are top-level
packages; an installed copy carries them as ``dipdefense.lightning_modules`` and
``dipdefense.datamodules`` (pyproject.toml puts them inside the one name; docs/layout.md).
Neither imports the other. The command lines that put a model and its data together find the
data package beside this one, and configs name the two packages' classes by their bare names
(``class_path: CIFAR10DataModule``), which jsonargparse looks up among the imported subclasses of
LightningModule and LightningDataModule, so one config serves both copies.
"""

import importlib
from types import ModuleType


def datamodules_package() -> ModuleType:
    """``datamodules`` in a checkout, ``dipdefense.datamodules`` in an installed copy."""
    return importlib.import_module(__package__.removesuffix("lightning_modules") + "datamodules")


def datamodule_class(class_path: str) -> type:
    """The data module class ``class_path`` names: a bare class name of the project's
    ``datamodules`` (also written ``datamodules.NAME`` or ``dipdefense.datamodules.NAME``), or
    the dotted path of a class of the user's own. Raises ImportError or AttributeError."""
    module_name, _, class_name = class_path.rpartition(".")
    if module_name in ("", "datamodules", "dipdefense.datamodules"):
        return getattr(datamodules_package(), class_name)
    return getattr(importlib.import_module(module_name), class_name)
