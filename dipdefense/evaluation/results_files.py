"""A run's results files, written atomically: results.json (header, rows, detection, worst case,
sanity checks), results.csv (the rows' columns) and results.md.
"""

import csv
import io
import json
from pathlib import Path
from typing import Any

from dipdefense.common.atomic_files import atomic_write_text
from dipdefense.evaluation.rows import COLUMNS, sanity_checks
from dipdefense.evaluation.tables import results_markdown


def write_results(
    out: Path,
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    detection: list[dict[str, Any]] | None = None,
    worst_case: list[dict[str, Any]] | None = None,
) -> None:
    checks = sanity_checks(rows, header["defense"])
    extra = {"detection": detection} if detection else {}
    extra |= {"worst_case": worst_case} if worst_case else {}
    extra |= {"sanity_checks": checks} if checks else {}
    atomic_write_text(out / "results.json", json.dumps({**header, "rows": rows, **extra}, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.md", results_markdown(header, rows, detection, worst_case, checks))
