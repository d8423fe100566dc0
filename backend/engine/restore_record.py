"""Restore records: which point an image file was last restored to, and how it looked then.

A full or delta restore onto an image file ends by writing a record: the repository, the
point, and the file's identity as ``fstat`` saw it after the last write and fsync (device,
inode, size, mtime and ctime in nanoseconds). A later ``restore --delta`` onto the same
path that finds the record still matching takes the two points' map difference instead of
reading the whole target, after a sample of blocks was read and checked (delta.py).

The record is evidence, never trusted alone: any write to the file, a ``touch -d`` that
puts the mtime back, a rename over it or a copy in its place changes the ctime or the
inode, and the record no longer matches (the record waits for the coarse clock the kernel
stamps ctime with to pass the file's ctime, so no later write shares its tick). A block device has no change time that follows
its writes, so it gets no record and is always read. Records live beside the local cache
(``<cache root>/restores/``; none when the cache is off), one small JSON file per target
path, written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cache import cache_root

RECORD_VERSION = 1
MAX_RECORDS = 512  # one per target path; the oldest go beyond this
_HEX = re.compile(r"[0-9a-f]{8,64}")
# The kernel stamps ctime from the coarse real-time clock (a tick, 1-10 ms): CLOCK_REALTIME_COARSE.
_COARSE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5)
TICK_WAIT = 0.05  # seconds at most to wait for that clock to pass the file's ctime


@dataclass(frozen=True)
class Identity:
    """What ``fstat`` says of a file; any write or replacement changes it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class RestoreRecord:
    repo_id: str
    point: str
    path: str
    identity: Identity


def _folder() -> Path | None:
    root = cache_root()
    return None if root is None else root / "restores"


def _record_path(folder: Path, target: str) -> Path:
    real = os.path.realpath(target)
    return folder / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest() + ".json")


def forget(target: str) -> None:
    """Drop the record of ``target`` (before a restore starts changing it)."""
    folder = _folder()
    if folder is not None:
        with contextlib.suppress(OSError):
            os.unlink(_record_path(folder, target))


def record(repo_id: str, point: str, target: str, st: os.stat_result) -> None:
    """Remember that ``target`` (as ``st`` describes it) holds ``point``; image files only.

    Best effort: a record that cannot be written only costs the next delta restore a read."""
    folder = _folder()
    if folder is None or not stat.S_ISREG(st.st_mode) or not _past_tick(st.st_ctime_ns):
        return
    entry = {
        "version": RECORD_VERSION,
        "repo_id": repo_id,
        "point": point,
        "path": os.path.realpath(target),
        "identity": asdict(Identity.of(st)),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".record-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(partial, _record_path(folder, target))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        _trim(folder)
    except OSError:
        return


def _past_tick(ctime_ns: int) -> bool:
    """Wait until the clock the kernel stamps ctime with has moved past ``ctime_ns``: a write
    after the record then gets a later ctime, never the same coarse tick. False when it does
    not within a few ticks (a file system with another clock): no record then."""
    deadline = time.monotonic() + TICK_WAIT
    while time.clock_gettime_ns(_COARSE_CLOCK) <= ctime_ns:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _trim(folder: Path) -> None:
    records = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError):
            records.append((path.stat().st_mtime_ns, path))
    records.sort()
    for _, path in records[: max(0, len(records) - MAX_RECORDS)]:
        with contextlib.suppress(OSError):
            path.unlink()


def matching(repo_id: str, target: str, fd: int) -> RestoreRecord | None:
    """The record of ``target`` when it names this repository and the open file ``fd`` is
    still exactly as it was recorded; else None (no record, unreadable, or stale)."""
    folder = _folder()
    if folder is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(_record_path(folder, target)) as f:
            entry = json.load(f)
        found = RestoreRecord(
            repo_id=str(entry["repo_id"]),
            point=str(entry["point"]),
            path=str(entry["path"]),
            identity=Identity(**{k: int(v) for k, v in entry["identity"].items()}),
        )
        if entry["version"] != RECORD_VERSION or not (
            _HEX.fullmatch(found.repo_id) and _HEX.fullmatch(found.point)
        ):  # the file is ours, but a point id names an object key: only plain hex passes
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if (
        found.repo_id != repo_id
        or found.path != os.path.realpath(target)
        or found.identity != Identity.of(st)
    ):
        return None
    return found
