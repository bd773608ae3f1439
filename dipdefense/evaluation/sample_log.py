"""``samples.jsonl``: one JSON line per (image, attack), appended as soon as it is done.

Each rank appends to a file of its own (rank 0 to ``samples.jsonl``, rank R to
``samples.rank<R>.jsonl``) with one ``write`` per line: one writer per file, so records
never interleave, on NFS too (whose ``O_APPEND`` is not atomic across clients). After the
run rank 0 folds the other ranks' files into ``samples.jsonl`` and deletes them. A rerun
reads every file, cuts a last line left partial by a crash off its own file before
appending, and skips what is done; records are keyed by (index, attack), so a record met
twice (a fold interrupted by a kill) counts once. A damaged line in the middle (bad bytes,
not JSON, not a record) is skipped with a warning and its image evaluated again; the records
after it are kept (they may be hours of DIP fits).
"""

import json
import os
import warnings
from pathlib import Path
from typing import Any

RecordKey = tuple[int, str]  # (dataset index, attack id)


def record_key(record: dict[str, Any]) -> RecordKey:
    return int(record["index"]), str(record["attack"])


def record_defended(record: dict[str, Any]) -> bool:
    """The defended victim is right, or the input was attacked and the defense refused it (INC
    past eta, a lone detector's flag): defended, as the adaptive attacks and the worst case count it."""
    return record["pred"] == record["label"] or (record["attack"] != "clean" and bool(record.get("rejected", False)))


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


MAIN_LOG = "samples.jsonl"


def rank_log_path(out: Path, rank: int) -> Path:
    """The file rank ``rank`` appends to."""
    return out / (MAIN_LOG if rank == 0 else f"samples.rank{rank}.jsonl")


def rank_log_paths(out: Path) -> list[Path]:
    """The other ranks' files, in rank order."""
    found = [(p, p.name.removeprefix("samples.rank").removesuffix(".jsonl")) for p in out.glob("samples.rank*.jsonl")]
    return [p for p, rank in sorted(found, key=lambda f: int(f[1]) if f[1].isdigit() else -1) if rank.isdigit()]


def read_run_records(out: Path, repair_rank: int | None = None) -> list[dict[str, Any]]:
    """Every record of the run in ``out``: ``samples.jsonl``, then the other ranks' files.
    ``repair_rank``: the rank whose own file gets a partial last line cut off."""
    records = []
    for path in [out / MAIN_LOG, *rank_log_paths(out)]:
        records += read_records(path, repair=repair_rank is not None and path == rank_log_path(out, repair_rank))
    return records


def merge_rank_logs(out: Path) -> int:
    """Fold the other ranks' files into ``samples.jsonl`` (records it lacks, appended), then
    delete them; returns how many records were added. Call on rank 0 after every rank ended."""
    main = out / MAIN_LOG
    known = set(unique_records(read_records(main, repair=True)))
    added = 0
    for path in rank_log_paths(out):
        fresh = [r for r in read_records(path) if record_key(r) not in known]
        SampleLog(main).append(fresh)  # before the unlink: a kill in between leaves duplicates, never a loss
        known |= {record_key(r) for r in fresh}
        added += len(fresh)
        path.unlink()
    return added


def finished_records(out: Path, indices: list[int], run_ids: set[str]) -> tuple[list[dict[str, Any]], int]:
    """The records a report is made of, after folding the other ranks' files in: one per image of
    this run's sample and attack run, over the images every attack has finished (all of them once
    a run ends; a --report_only of a killed run, the finished ones), so that every row and the
    worst case cover the same images. Returns them and how many images they cover."""
    merge_rank_logs(out)
    wanted = set(indices)
    records = [
        r for r in unique_records(read_run_records(out)).values() if r["index"] in wanted and r["attack"] in run_ids
    ]
    done_by: dict[int, set[str]] = {}
    for r in records:
        done_by.setdefault(r["index"], set()).add(r["attack"])
    complete = {i for i, attacks in done_by.items() if attacks == run_ids}
    return [r for r in records if r["index"] in complete], len(complete)


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
