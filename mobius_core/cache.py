"""Caches that heal: entries under ``$MOBIUS_CACHE`` are checked on each use, remade if damaged.

An entry is one or more files, each written atomically, then a *record* beside them (JSON,
also written atomically) of every file's size and SHA-256. Each use checks the files against
the record. A file that was truncated, emptied or overwritten, or a record that disagrees
with its files, costs one warning line and the entry is made again. An entry without a
readable record (older versions wrote none) is kept when the caller's ``adopt`` can load it,
and its record is written then.

Making an entry holds an exclusive lock file beside the record, so two processes that start
at once make it once: the second waits, then finds it whole. A reader never sees a
half-written file under its final name (atomic renames), only, briefly, files that are newer
than their record; it then waits for the lock and checks again, without a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from .atomic import atomic_write_bytes

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: atomic renames only, no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORD_VERSION = 1
FIX = "set MOBIUS_CACHE to a writable folder"


def cache_root() -> Path:
    """The cache folder: ``$MOBIUS_CACHE``, or ``~/.cache/mobius`` when it is unset or empty."""
    return Path(os.environ.get("MOBIUS_CACHE") or Path.home() / ".cache" / "mobius")


class CacheDirError(ValueError):
    """A cache entry must be written to a folder that cannot be written (names it and the fix)."""


class Damaged(Exception):
    """Raised by an ``adopt`` function: the entry's files exist but cannot be used (the reason)."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_record(record: str | os.PathLike, files: Sequence[str | os.PathLike]) -> Path:
    """Record the size and SHA-256 of ``files`` (inside ``record``'s folder) in ``record``."""
    record = Path(record)
    entries = {}
    for f in map(Path, files):
        name = f.relative_to(record.parent).as_posix()
        entries[name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    text = json.dumps({"version": RECORD_VERSION, "files": entries}, indent=1, sort_keys=True)
    return atomic_write_bytes(record, text.encode())


def read_record(record: str | os.PathLike) -> dict[str, dict] | None:
    """The files a record lists (name -> size, sha256); None when it is missing or no record."""
    try:
        meta = json.loads(Path(record).read_bytes())
        files = meta["files"]
        ok = meta["version"] == RECORD_VERSION and isinstance(files, dict) and files
        ok = ok and all(isinstance(v["size"], int) and isinstance(v["sha256"], str)
                        for v in files.values())  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if ok else None


def mismatch(record: str | os.PathLike, files: dict[str, dict]) -> str | None:
    """Why the files of ``record`` differ from what it lists, or None when they all match."""
    root = Path(record).parent
    for name, want in files.items():
        path = root / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if size != want["size"]:
            return f"{path} is {size} bytes, {want['size']} recorded"
        try:
            if _sha256(path) != want["sha256"]:
                return f"{path} does not match its recorded checksum"
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror or exc})"
    return None


def is_whole(record: str | os.PathLike) -> bool:
    """Whether ``record`` exists and every file it lists matches it (reads only)."""
    files = read_record(record)
    return files is not None and mismatch(record, files) is None


def ensure_entry(
    record: str | os.PathLike,
    make: Callable[[], Sequence[Path]],
    adopt: Callable[[], Sequence[Path] | None],
    what: str,
    redo: str,
    fix: str = FIX,
) -> None:
    """Make sure the cache entry of ``record`` is whole, making it when it is not.

    make: writes the entry (each file atomically) and returns its files, all inside
        ``record``'s folder.
    adopt: for an entry without a readable record: its files when they load, None when
        there is nothing to adopt (never made, or interrupted), or raises ``Damaged``.
    what, redo: the warning for a damaged entry reads ``{what}: {reason}; {redo}``.
    fix: how to choose another cache folder, for the error when this one is not writable.
    """
    record = Path(record)
    if is_whole(record):  # the common case: no lock, no write (a read-only cache serves)
        return
    try:
        lock = _open_lock(record)
    except OSError as exc:
        files = read_record(record)
        reason = mismatch(record, files) if files is not None else None
        with contextlib.suppress(Damaged):
            if files is None and adopt():
                return  # an entry from an older version that loads; it stays unrecorded
        why = f"{reason}, and " if reason else ""
        raise CacheDirError(
            f"{what}: {why}{record.parent} is not writable ({exc.strerror or exc}); {fix}"
        ) from exc
    with _locked(lock):
        files = read_record(record)
        reason = None
        if files is not None:
            reason = mismatch(record, files)
            if reason is None:
                return  # made by another process while this one waited for the lock
        else:
            try:
                found = adopt()
            except Damaged as exc:
                reason = str(exc)
            else:
                if found:
                    write_record(record, found)
                    return
        if reason is not None:
            log.warning("%s: %s; %s", what, reason, redo)
        record.unlink(missing_ok=True)
        write_record(record, make())


def _open_lock(record: Path) -> IO[bytes]:
    record.parent.mkdir(parents=True, exist_ok=True)
    return open(record.parent / f".{record.name}.lock", "ab")


@contextlib.contextmanager
def _locked(f: IO[bytes]) -> Iterator[None]:
    with f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock
