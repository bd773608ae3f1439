"""``samples.jsonl``: one JSON line per (image, attack), appended as soon as it is done.

Every rank appends to the same file through an ``O_APPEND`` descriptor with one
``write`` per line, so lines from several processes never interleave. A rerun reads the
file, drops a last line cut off by a crash (the file is truncated back to the last
complete line before anything new is appended) and skips what is done. A damaged line in
the middle (bad bytes, not JSON, not a record) is skipped with a warning and its image
evaluated again; the records after it are kept (they may be hours of DIP fits).
"""

import json
import os
import warnings
from pathlib import Path
from typing import Any

RecordKey = tuple[int, str]  # (dataset index, attack id)


def record_key(record: dict[str, Any]) -> RecordKey:
    return int(record["index"]), str(record["attack"])


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Complete records in ``path``; with ``repair`` a trailing partial line is also cut
    off the file, so that the next append starts on a fresh line. Damaged complete lines are
    skipped (one warning says how many)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, good_end, start, damaged = [], 0, 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: the last write was cut off
        line, good_end, start = data[start:end], end + 1, end + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("index"), int) and isinstance(record.get("attack"), str):
            records.append(record)
        else:
            damaged += 1
    if damaged:
        warnings.warn(
            f"{path}: skipped {damaged} damaged line(s) (not a JSON record); their images are evaluated again",
            stacklevel=2,
        )
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def unique_records(records: list[dict[str, Any]]) -> dict[RecordKey, dict[str, Any]]:
    """One record per (index, attack): the first one written wins."""
    out: dict[RecordKey, dict[str, Any]] = {}
    for r in records:
        out.setdefault(record_key(r), r)
    return out


class SampleLog:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for record in records:
                os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)
