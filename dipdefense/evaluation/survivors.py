"""The images an earlier run left right: AutoAttack's cascade across runs.

A costly attack (APGD-100 through a DIP fit, NES, the pathwise gradient) only needs the images
every cheaper attack already run has failed to break: the per-image worst case over both runs is
then the same as running it on every image (Croce & Hein 2020 run AutoAttack's four attacks so,
each on what the previous ones left). ``evaluate.py --survivors-of RUN`` draws its sample here.
"""

import json
from pathlib import Path
from typing import Any

from dipdefense.common.errors import UserError
from dipdefense.evaluation.sample_log import record_defended

# What must match for the two runs' verdicts to be about the same defended classifier.
SAME_DEFENDED_CLASSIFIER = ("dataset", "victim_sha256", "victim_options", "defense", "defense_params")


def _run_folder_records(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from dipdefense.evaluation.compare import load_records

    if not folder.is_dir():
        raise UserError(f"--survivors-of {folder}: no such run folder (give an evaluate.py --out folder)")
    try:
        manifest = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--survivors-of {folder}: no readable run.json there ({err})") from None
    return manifest, load_records(folder)


def survivor_indices(folder: Path, manifest: dict[str, Any]) -> tuple[list[int], int]:
    """Dataset indices of the images the run in ``folder`` finished (a record of every attack it
    names) with the defended victim right under every one of them (``record_defended``, the
    worst case's verdict), in the order that run recorded them, and how many images it finished.

    ``manifest`` is the new run's run.json: its data set, victim and defense (with parameters)
    must be the earlier run's, else the two verdicts are about different classifiers.
    """
    previous, records = _run_folder_records(folder)
    differing = [
        key
        for key in SAME_DEFENDED_CLASSIFIER
        if json.dumps(previous.get(key), sort_keys=True) != json.dumps(manifest.get(key), sort_keys=True)
    ]
    if differing:
        raise UserError(
            f"--survivors-of {folder}: that run's {', '.join(differing)} differ from this run's; its verdicts are "
            f"about another defended classifier (it ran {previous.get('defense')!r}, this runs {manifest['defense']!r})"
        )
    attacks = {entry["id"] for entry in previous.get("attacks") or ()}
    by_image: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:  # records are appended chunk by chunk: first appearance is sample order
        by_image.setdefault(int(record["index"]), {}).setdefault(record["attack"], record)
    finished = [i for i, mine in by_image.items() if set(mine) >= attacks]
    if not finished:
        raise UserError(f"--survivors-of {folder}: no image has a record of every attack there yet")
    return [i for i in finished if all(record_defended(by_image[i][a]) for a in attacks)], len(finished)


def cascade_summary(run: str, parent_images: int, survivors: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's ``survivors_of``: the worst case over both runs, on the earlier run's images.

    ``records`` are this run's finished ones. Until every survivor is finished the figure is an
    upper bound (an unfinished survivor counts as right)."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_image.setdefault(int(record["index"]), []).append(record)
    right = sum(all(record_defended(r) for r in mine) for mine in by_image.values())
    unfinished = survivors - len(by_image)
    return {
        "run": run,
        "parent_images": parent_images,
        "survivors": survivors,
        "attacked": len(by_image),
        "right": right,
        "worst_case_accuracy": (right + unfinished) / parent_images,
        **({"upper_bound": True} if unfinished else {}),
    }
