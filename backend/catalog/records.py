"""The catalog's plain values: job records, queries, errors, the default URL.

They hold no SQLAlchemy, so the service and every front end handle job records without
loading the database layer; ``store.py`` (``Catalog``) loads it when a catalog is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..errors import LaminaError

if TYPE_CHECKING:
    import sqlalchemy as sa

#: Request operations counted per job (docs/catalog.md, "Requests and cost").
REQUEST_OPS = ("put", "get", "head", "list", "delete", "copy")

CATALOG_ENV = "LAMINA_CATALOG"

#: A job of another host whose heartbeat is older than this shows as interrupted.
STALE_AFTER = 300.0
#: How often a process refreshes the heartbeat of its running jobs.
HEARTBEAT_EVERY = 60.0

#: Catalog URLs that turn recording off.
OFF = ("none", "off")
INTERRUPTED = "interrupted"
LIVE_STATES = ("queued", "running")
FAILED_STATES = ("failed", INTERRUPTED)


class CatalogError(LaminaError):
    """The catalog cannot be opened or written: one line, what and why."""


class JobNotFound(LaminaError):
    """No job of the catalog has that id."""


class CatalogTooNew(CatalogError):
    """The catalog's schema revision is unknown to this lamina: a newer one wrote it."""


def default_catalog_url() -> str:
    """$LAMINA_CATALOG, else ``sqlite:///$XDG_STATE_HOME/lamina/catalog.sqlite``."""
    if os.environ.get(CATALOG_ENV):
        return os.environ[CATALOG_ENV]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return "sqlite:///" + os.path.join(state, "lamina", "catalog.sqlite")


@dataclass
class JobRecord:
    """One job as the catalog holds it."""

    id: str
    kind: str
    state: str
    description: str = ""
    repository: str = ""
    volume: str | None = None
    point: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = None
    bytes_read: int = 0
    bytes_stored: int = 0
    bytes_deduplicated: int = 0
    error: str | None = None
    origin: str = "cli"
    host: str = ""
    pid: int = 0
    boot_id: str = ""
    process_start: str = ""
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_OPS, 0))
    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cost_usd: float = 0.0
    events: list[JobEvent] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)

    def row(self) -> dict[str, Any]:
        from .schema import jobs  # SQLAlchemy's tables: only where a row is written

        values = {
            c.name: getattr(self, c.name, None) for c in jobs.columns if hasattr(self, c.name)
        }
        for op in REQUEST_OPS:
            values[f"requests_{op}"] = int(self.requests.get(op, 0))
        return values

    @classmethod
    def of_row(cls, row: sa.Row[Any]) -> JobRecord:
        m = row._mapping
        names = {f.name for f in cls.__dataclass_fields__.values()} - {"requests", "events"}
        record = cls(**{n: m[n] for n in names if n in m})
        record.requests = {op: int(m[f"requests_{op}"]) for op in REQUEST_OPS}
        return record

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "description": self.description,
            "repository": self.repository,
            "volume": self.volume,
            "point": self.point,
            "created": self.created_at,
            "started": self.started_at,
            "ended": self.ended_at,
            "duration_seconds": self.duration,
            "bytes_read": self.bytes_read,
            "bytes_stored": self.bytes_stored,
            "bytes_deduplicated": self.bytes_deduplicated,
            "error": self.error,
            "started_by": {"origin": self.origin, "host": self.host, "pid": self.pid},
            "requests": dict(self.requests),
            "retries": self.retries,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "cost_usd": self.cost_usd,
            "events": [{"at": e.at, "state": e.state, "message": e.message} for e in self.events],
        }


@dataclass(frozen=True)
class JobEvent:
    at: float
    state: str
    message: str = ""


@dataclass(frozen=True)
class CatalogTotals:
    jobs: dict[tuple[str, str], int]  # (kind, state) -> jobs
    bytes_read: int
    bytes_stored: int
    requests: dict[str, int]  # of finished jobs
    durations: dict[str, tuple[list[int], int, float]]  # kind -> (cumulative, count, sum)
    last_success: dict[str, float]  # volume -> end of its newest succeeded backup


@dataclass(frozen=True)
class HistoryQuery:
    volume: str | None = None
    kind: str | None = None
    since: float | None = None  # seconds since the epoch
    failed: bool = False
    limit: int | None = None
    with_events: bool = False
    #: Only jobs after this one in the newest-first order: (created_at, id) of the last
    #: job of the previous page. Keyset paging: a job added meanwhile shifts no page.
    after: tuple[float, str] | None = None


@dataclass
class ScheduleRow:
    """A stored schedule, as its row in the schedules table holds it."""

    name: str
    kind: str
    repository: str
    created_at: float
    next_run: float
    password_file: str | None = None
    local_root: str | None = None
    volume: str | None = None
    source: str | None = None
    every_seconds: float | None = None
    cron: str | None = None
    retention: str = "{}"
    paused: bool = False
    run_once: bool = False
    last_run: float | None = None
    last_state: str | None = None
    last_error: str | None = None
    last_jobs: str | None = None
    claimed_by: str | None = None
    copy_to: str | None = None
    copy_password_file: str | None = None

    @classmethod
    def of_row(cls, row: sa.Row[Any]) -> ScheduleRow:
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
