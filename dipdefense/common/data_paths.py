"""Where data lives: config value > environment variable > default, and archives
extracted once into a cache outside the repository."""

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from dipdefense.common.errors import DataNotFoundError

CACHE_ENV = "DIPDEF_CACHE"


def cache_root() -> Path:
    """Cache for extracted archives and decoded tensors: ``$DIPDEF_CACHE`` or
    ``~/.cache/dipdefense``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dipdefense").expanduser()


def resolve_data_dir(configured: str | os.PathLike | None, env_var: str, default: str | os.PathLike) -> Path:
    """The configured path if given, else ``$env_var`` if set, else ``default``."""
    chosen = configured or os.environ.get(env_var) or default
    return Path(chosen).expanduser()


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _remove_abandoned_extractions(folder: Path) -> None:
    """Delete ``.partial-<pid>-*`` folders whose process is gone (a run killed with -9)."""
    for stale in folder.glob(".partial-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def extract_archive(archive: Path) -> Path:
    """Extract ``archive`` once into the cache and return the folder.

    The folder name carries the archive's name, size and mtime, so a changed archive is
    extracted afresh; extraction goes to a temporary folder renamed into place, so a
    killed run never leaves a half-extracted folder that a later run trusts.
    """
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "extracted" / f"{archive.name.split('.')[0]}-{key}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_extractions(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".partial-{os.getpid()}-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(target)
    except FileExistsError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:  # truncated or not an archive
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataNotFoundError(
            f"{archive} is a damaged archive ({type(err).__name__}: {err or 'unexpected end of data'}); "
            "copy it again (a .tar.gz/.tgz/.tar of the data set's folder)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
