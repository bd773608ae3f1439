"""One import name: every module of the project is imported as ``dipdefense.<subpackage>``."""

import ast
import subprocess
import sys
from pathlib import Path

import dipdefense

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = (
    "attacks",
    "common",
    "datamodules",
    "defenses",
    "dip",
    "evaluation",
    "lightning_modules",
    "manifold",
    "nets",
)


def _project_files() -> list[Path]:
    folders = [*SUBPACKAGES, "tests", "studies", "benchmarks", "dipdefense"]
    return [*[p for f in folders for p in (REPO / f).rglob("*.py")], REPO / "train.py", REPO / "evaluate.py"]


def test_no_module_imports_a_subpackage_by_its_bare_name():
    """A bare ``import common`` would still work in a checkout (the repository root is on
    sys.path) and load a second copy of the module, whose classes are not the first copy's:
    ``except UserError`` would then miss errors raised as ``dipdefense.common.errors.UserError``."""
    bare = []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bare += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in SUBPACKAGES]
    assert not bare, "import these as dipdefense.<name>: " + ", ".join(bare)


def test_the_subpackages_are_the_checkouts_folders():
    import dipdefense.common.assets as assets
    import dipdefense.nets as nets

    assert Path(nets.__file__).resolve() == REPO / "nets" / "__init__.py"
    assert str(REPO) in [str(Path(p).resolve()) for p in dipdefense.__path__]
    assert (assets.asset_dir("configs") / "victim_cifar.yaml").is_file()
    assert assets.asset_dir("checkpoints").resolve() == REPO / "checkpoints"


def test_the_package_imports_from_another_directory(tmp_path):
    """From a directory where the checkout is not on sys.path, through the installed (editable) copy."""
    code = "import dipdefense.defenses, dipdefense.evaluation.cli; print(dipdefense.defenses.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_data_module_is_named_by_its_class_or_its_old_module_path(tmp_path):
    from dipdefense.datamodules import MNISTDataModule
    from dipdefense.evaluation.cli import build_datamodule

    for class_path in ("MNISTDataModule", "datamodules.MNISTDataModule", "dipdefense.datamodules.MNISTDataModule"):
        module = build_datamodule({"class_path": class_path, "init_args": {"data_dir": str(tmp_path)}})
        assert type(module) is MNISTDataModule
