"""The layout (docs/layout.md): every import of the project's own modules names its file, by the
rule static tools use (module name = file path under a package root), in a plain checkout."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dipdefense", "lightning_modules", "datamodules")  # the package roots of a checkout
# Only an installed copy has these names: pyproject.toml carries the two folders inside dipdefense.
INSTALLED_ONLY = (
    "dipdefense.lightning_modules",
    "dipdefense.datamodules",
    "dipdefense.configs",
    "dipdefense.checkpoints",
)


def _project_files() -> list[Path]:
    folders = [*PACKAGES, "tests", "studies", "benchmarks", "examples"]
    return [*[p for f in folders for p in (REPO / f).rglob("*.py")], REPO / "train.py", REPO / "evaluate.py"]


def _resolves(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _top_level_names(module: str) -> set[str]:
    """The names a module of the checkout defines or imports at its top level."""
    path = REPO.joinpath(*module.split("."))
    path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of each import of the project's own modules in ``path``;
    ``from package import name`` counts ``package.name`` where that is a module."""
    package = ".".join(path.relative_to(REPO).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found += [(node.lineno, base)]
            for a in node.names:  # a module of the package, else a name its module must define
                if _resolves(f"{base}.{a.name}") or not _resolves(base) or a.name in _top_level_names(base):
                    found.append((node.lineno, f"{base}.{a.name}" if _resolves(f"{base}.{a.name}") else base))
                else:
                    found.append((node.lineno, f"{base}.{a.name}"))
    return [(line, m) for line, m in found if m.split(".")[0] in PACKAGES]


def test_every_internal_import_resolves_to_its_file():
    unresolved = [
        f"{path.relative_to(REPO)}:{line} {module}"
        for path in _project_files()
        for line, module in _imported_modules(path)
        if not _resolves(module)
    ]
    assert not unresolved, "imports that name no file of the checkout: " + ", ".join(unresolved)


def test_the_checker_sees_the_imports():
    """The test above is not vacuous: it finds hundreds of imports, relative ones too."""
    imports = [m for path in _project_files() for _, m in _imported_modules(path)]
    assert len(imports) > 300
    assert "lightning_modules.robustness_eval" in imports and "datamodules.in_memory" in imports
    assert not _resolves("dipdefense.lightning_modules") and _resolves("dipdefense.dip.engine")


def test_no_module_uses_a_name_only_an_installed_copy_has():
    """``dipdefense.lightning_modules`` exists in an installed copy only (and, through the editable
    install's finder, as a second copy of the checkout's modules, whose classes are not the first
    copy's): code names the Lightning layer relatively inside it and by its folder outside."""
    offending = [
        f"{path.relative_to(REPO)}:{line} {module}"
        for path in _project_files()
        for line, module in _imported_modules(path)
        if module.startswith(INSTALLED_ONLY)
    ]
    assert not offending, ", ".join(offending)


def test_shipped_configs_name_classes_by_bare_names():
    """A bare class name finds the class in a checkout and in an installed copy alike."""
    long_names = [
        f"{p.name}: {line.strip()}"
        for p in (REPO / "configs").glob("*.yaml")
        for line in p.read_text().splitlines()
        if "class_path:" in line and line.split("class_path:")[1].strip().startswith(("dipdefense.", *PACKAGES))
    ]
    assert not long_names, ", ".join(long_names)


def test_assets_are_the_checkouts_folders():
    import dipdefense.common.assets as assets

    assert (assets.asset_dir("configs") / "victim_cifar.yaml").is_file()
    assert assets.asset_dir("checkpoints").resolve() == REPO / "checkpoints"


def test_the_library_imports_from_another_directory(tmp_path):
    """From a directory where the checkout is not on sys.path, through the installed (editable) copy."""
    code = "import dipdefense.defenses, dipdefense.lightning_modules.evaluate_cli; print(dipdefense.defenses.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_data_module_is_named_by_its_class_or_a_module_path(tmp_path):
    from datamodules import MNISTDataModule
    from lightning_modules.evaluation_parts import build_datamodule

    for class_path in ("MNISTDataModule", "datamodules.MNISTDataModule", "dipdefense.datamodules.MNISTDataModule"):
        module = build_datamodule({"class_path": class_path, "init_args": {"data_dir": str(tmp_path)}})
        assert type(module) is MNISTDataModule


def test_an_import_up_the_layers_fails_the_layers_check_with_one_line(tmp_path):
    """.ci/layers (run by .ci/run): one line naming the importing and the imported module."""
    import shutil

    for name in ("dipdefense", "lightning_modules", "datamodules", ".ci"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "lint-imports").symlink_to(Path(sys.executable).parent / "lint-imports")
    check = ["bash", str(tmp_path / ".ci" / "layers")]
    assert subprocess.run(check, capture_output=True, text=True, timeout=300).returncode == 0
    skip_net = tmp_path / "dipdefense" / "dip" / "skip_net.py"
    skip_net.write_text(skip_net.read_text() + "\nfrom dipdefense.evaluation import metrics  # noqa\n")
    out = subprocess.run(check, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"layers: dipdefense.dip.skip_net -> dipdefense.evaluation.metrics (l.{len(skip_net.read_text().splitlines())}) "
        "runs up the layers (pyproject.toml, [tool.importlinter])"
    ]
