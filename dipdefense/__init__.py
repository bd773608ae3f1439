"""dip-defense: deep-image-prior adversarial defenses, their victims, attacks and learned
baselines, as a PyTorch Lightning project.

Everything is imported under this one name (``dipdefense.defenses``, ``dipdefense.nets``, ...),
so an installed copy puts nothing else into site-packages. Its subpackages are the checkout's
top-level folders (attacks/, common/, datamodules/, defenses/, dip/, evaluation/,
lightning_modules/, manifold/, nets/, and configs/ and checkpoints/ as data): an installed copy
has them here (pyproject.toml maps them); in a checkout they are found next to this folder.
"""

from pathlib import Path

_here = Path(__file__).resolve().parent
if not (_here / "common").is_dir() and (_here.parent / "common" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # a checkout (plain or editable install)
