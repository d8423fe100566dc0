"""Jobs on their way into an SQLite catalog: one small JSON file per job, beside the catalog.

A process that records its jobs into the embedded SQLite catalog writes each job's record
and its state changes here instead of opening the catalog itself: loading SQLAlchemy costs
about 0.3 s of CPU, more than a small incremental backup's whole work. Whoever opens the
catalog next moves the waiting jobs in (``Catalog`` does it on opening and before every
read), so the history shows them at once, running ones included, and a job whose process
died is marked interrupted as before.

Only an SQLite catalog that can be written gets a spool: a read-only one, and PostgreSQL
(shared between hosts, while a folder is on one host), are written directly, with the
warnings that brings. Nothing here loads SQLAlchemy.

A file is replaced whole (written beside, then renamed), so a reader sees one version or
the next; ``Catalog.ingest_pending`` keeps a job's state moving forward only, so an older
version read late never undoes a newer one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .records import CATALOG_ENV, OFF, JobEvent, JobRecord, default_catalog_url

SPOOL_FORMAT = 1
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUFFIX = ".json"
_LEFTOVER_AFTER = 3600.0  # a half-written file of a process that died while writing it


def sqlite_file(url: str | None) -> Path | None:
    """The file of an SQLite catalog URL (or plain path), as ``store._parse`` reads it; None
    for PostgreSQL, recording turned off, or a URL with options this does not read."""
    url = url or os.environ.get(CATALOG_ENV) or default_catalog_url()
    if url.lower() in OFF:
        return None
    if "://" not in url:
        return Path(os.path.abspath(url))
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite" or not rest.startswith("/") or "?" in rest:
        return None
    database = rest[1:]  # sqlite:///relative, sqlite:////absolute
    if not database or database == ":memory:":
        return None
    return Path(os.path.abspath(database))


def spool_folder(database: Path) -> Path:
    return database.with_name(database.name + ".pending")


@dataclass(frozen=True)
class Pending:
    path: Path
    record: JobRecord
    events: tuple[JobEvent, ...]


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def for_catalog(cls, url: str | None) -> Spool | None:
        """The spool of ``url`` when it is an SQLite catalog this process can write to."""
        database = sqlite_file(url)
        if database is None:
            return None
        folder = database.parent
        if database.exists() and not (database.is_file() and os.access(database, os.W_OK)):
            return None  # the direct path says why, in one line
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            return None
        return cls(spool_folder(database))

    def write(self, record: JobRecord, events: Sequence[JobEvent]) -> None:
        """Put ``record`` with ``events`` (all of the job's so far) in place of its last
        version. Raises OSError or ValueError; the caller then writes the catalog itself."""
        if not _JOB_ID.fullmatch(record.id):
            raise ValueError(f"job id {record.id!r} is not a file name")
        payload = {
            "format": SPOOL_FORMAT,
            "record": {k: v for k, v in asdict(record).items() if k != "events"},
            "events": [[e.at, e.state, e.message] for e in events],
        }
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.folder / f"{record.id}{_SUFFIX}"
        partial = self.folder / f".{record.id}.{os.getpid()}.tmp"
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(partial, final)

    def pending(self) -> list[Pending]:
        """Every job waiting, oldest file first. A file this lamina cannot read (a newer
        format, damage) stays where it is for one that can."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        found: list[tuple[float, Pending]] = []
        now = time.time()
        for entry in entries:
            if entry.name.startswith("."):
                _remove_leftover(entry, now)
                continue
            if not entry.name.endswith(_SUFFIX):
                continue
            try:
                with open(entry.path, encoding="utf-8") as f:
                    payload = json.load(f)
                mtime = entry.stat().st_mtime
            except (OSError, ValueError):
                continue
            item = _parse(Path(entry.path), payload)
            if item is not None:
                found.append((mtime, item))
        found.sort(key=lambda pair: pair[0])
        return [item for _, item in found]

    @staticmethod
    def remove(item: Pending) -> None:
        try:
            item.path.unlink()
        except FileNotFoundError:
            pass


def _parse(path: Path, payload: Any) -> Pending | None:
    if not isinstance(payload, dict) or payload.get("format") != SPOOL_FORMAT:
        return None
    try:
        fields = dict(payload["record"])
        record = JobRecord(**fields)
        events = tuple(
            JobEvent(float(at), str(state), str(msg)) for at, state, msg in payload["events"]
        )
    except (KeyError, TypeError, ValueError):
        return None
    if f"{record.id}{_SUFFIX}" != path.name:
        return None
    return Pending(path, record, events)


def _remove_leftover(entry: os.DirEntry[str], now: float) -> None:
    try:
        if now - entry.stat().st_mtime > _LEFTOVER_AFTER:
            os.unlink(entry.path)
    except OSError:
        pass
