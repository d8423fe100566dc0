"""What the service layer hands to front ends: one plain dataclass per concept.

Every front end shows these and nothing else: the CLI prints them, the gRPC server turns
them into messages (and ``RemoteService`` turns messages back into the very same classes,
``wire.py``), the TUI draws them. A field a front end needs is a field or a property here,
filled by the service, so no front end keeps a copy of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The catalog's job records (kind, state changes, figures, requests, cost, error line,
# who started it), shown as they are (re-exported).
from ..catalog.records import JobEvent as JobEvent
from ..catalog.records import JobRecord as JobRecord

# The engine's reports and names, shown as they are (re-exported).
from ..engine.compare import CompareReport as CompareReport
from ..engine.compare import VolumeComparison as VolumeComparison
from ..engine.copy import CopyReport as CopyReport
from ..engine.extract_report import ExtractReport as ExtractReport
from ..engine.extract_report import Skipped as Skipped
from ..engine.locks import LockInfo as LockInfo
from ..engine.pipelines import RestoreReport as RestoreReport
from ..engine.pipelines import VerifyReport as VerifyReport
from ..engine.pipelines import VolumeRef as VolumeRef
from ..engine.prune import PruneReport as PruneReport
from ..progress import Progress

if TYPE_CHECKING:
    from ..engine.repository import Point
    from ..local.cluster import LocalSnapshot
    from .files import FileEntry as FileEntry


def __getattr__(name: str) -> Any:
    # FileEntry is an fsread Entry: the filesystem parsers load only for file browsing.
    if name == "FileEntry":
        from .files import FileEntry

        return FileEntry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FINISHED_STATES = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------------------- repository


@dataclass(frozen=True)
class RepositoryInfo:
    url: str
    id: str
    version: int
    grid_size: int
    encrypted: bool
    compression: str
    created: str
    object_lock_days: int = 0
    fingerprint_block: int = 0  # 0: the repository keeps no fingerprints (made before them)
    server: str | None = None  # the lamina server the repository is reached through

    def as_json(self) -> dict[str, Any]:
        """Its fields; ``server`` only when the repository is reached through one."""
        values = dict(self.__dict__)
        if values["server"] is None:
            del values["server"]
        return values


@dataclass(frozen=True)
class Capabilities:
    """Which optional operations a service offers; front ends hide the others."""

    browse: bool = False
    read_files: bool = False
    extract: bool = False
    delete: bool = False
    mount: bool = False
    protect: bool = False


# ---------------------------------------------------------------------------- points


@dataclass(frozen=True)
class PointInfo:
    id: str
    parent: str | None
    kind: str
    volume: VolumeRef
    created: str
    capacity: int
    snapshot_handle: str | None
    image_digest: str
    stats: dict[str, Any]
    notes: list[str]
    manifest: dict[str, Any]
    protected: bool = False
    verify_state: str = ""  # "", "verifying", "ok" or "corrupt": this service's last verify

    @classmethod
    def of(cls, p: Point, protected: bool = False, verify_state: str = "") -> PointInfo:
        m = p.manifest
        v = m["volume"]
        return cls(
            id=p.id,
            parent=p.parent,
            kind=str(m.get("kind", "incremental" if p.parent else "full")),
            volume=VolumeRef(v["cluster"], v["namespace"], v["name"]),
            created=p.created,
            capacity=p.capacity,
            snapshot_handle=m.get("snapshot_handle"),
            image_digest=str(m.get("image_digest", "")),
            stats=dict(m.get("stats", {})),
            notes=list(m.get("notes", [])),
            manifest=m,
            protected=protected,
            verify_state=verify_state,
        )

    def _stat(self, name: str) -> int:
        return int(self.stats.get(name, 0))

    @property
    def bytes_read(self) -> int:
        return self._stat("bytes_read")

    @property
    def bytes_new(self) -> int:
        return self._stat("bytes_new")

    @property
    def bytes_stored(self) -> int:
        return self._stat("bytes_stored")

    @property
    def bytes_deduplicated(self) -> int:
        return self._stat("bytes_deduplicated")

    @property
    def bytes_uploaded(self) -> int:
        return self._stat("bytes_uploaded")

    @property
    def duration(self) -> float:
        return float(self.stats.get("duration_seconds", 0.0))

    @property
    def changed_share(self) -> float:
        """The share of the volume this point had to read."""
        return self.bytes_read / self.capacity if self.capacity else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "kind": self.kind,
            "volume": self.volume.as_dict(),
            "created": self.created,
            "capacity": self.capacity,
            "snapshot_handle": self.snapshot_handle,
            "image_digest": self.image_digest,
            "stats": self.stats,
            "notes": self.notes,
            "protected": self.protected,
            "consolidated": list(self.manifest.get("consolidated", [])),
        }


@dataclass(frozen=True)
class VolumeInfo:
    """A volume the repository holds points of."""

    volume: VolumeRef
    points: int
    last_point: PointInfo
    capacity: int
    stored_bytes: int  # bytes uploaded by this volume's points (new pieces only)
    chain_length: int = 0  # points in the chain of the newest point


@dataclass(frozen=True)
class ForgetDecision:
    point: PointInfo
    keep: bool
    reasons: list[str]


@dataclass(frozen=True)
class ForgetReport:
    dry_run: bool
    decisions: list[ForgetDecision]
    removed: list[str]


# ---------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class ClusterSummary:
    name: str
    kind: str  # "local" or "kubernetes"
    current: bool  # the kubeconfig's current context
    server: str | None  # the API server; for the local cluster, its folder
    namespace: str | None = None
    cluster: str = ""  # the kubeconfig's cluster entry the context names
    user: str = ""  # the kubeconfig's user entry the context names


@dataclass(frozen=True)
class Reachability:
    """Whether a cluster answered a check."""

    ok: bool
    detail: str  # a version when ok, else what went wrong, in plain words
    seconds: float


@dataclass(frozen=True)
class ClusterVolume:
    """A volume of a cluster; with ``with_backups``, also what the repository holds of it."""

    cluster: str
    namespace: str
    name: str
    mode: str  # "Block" or "Filesystem"
    capacity: int
    storage_class: str
    driver: str
    cbt: bool  # the driver offers changed-block tracking
    source: str | None = None  # the image or device of a local volume
    phase: str = "Bound"
    in_cluster: bool = True  # False: only its backups remain (the volume is gone or not listed)
    last_backup: str | None = None  # ISO time of the newest point
    last_point: str | None = None
    chain_length: int = 0  # points in the newest point's chain
    points: int = 0  # all points of the volume
    stored: int = 0  # bytes uploaded by this volume's points

    @property
    def key(self) -> str:
        """How the volume is named everywhere: ``cluster/namespace/name``."""
        return f"{self.cluster}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LocalSnapshotInfo:
    namespace: str
    name: str
    handle: str
    source: str
    size: int
    created: str
    made_by: str  # "backup" when a backup took it, "" when taken by hand
    needed_by: str | None  # the point whose next incremental starts from this snapshot
    copy_method: str = ""
    image: str = ""

    @classmethod
    def of(cls, snapshot: LocalSnapshot, needed_by: str | None) -> LocalSnapshotInfo:
        return cls(
            namespace=snapshot.namespace,
            name=snapshot.name,
            handle=snapshot.handle,
            source=snapshot.source,
            size=snapshot.size,
            created=snapshot.created,
            made_by=snapshot.made_by,
            needed_by=needed_by,
            copy_method=snapshot.copy_method,
            image=str(snapshot.image),
        )

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- mounts, files


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    point: str | None  # None: the whole repository
    pid: int
    repo: str


# ---------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobView:
    """A job at one moment, the same for every front end (``jobs.view_of`` builds it)."""

    id: str
    kind: str  # backup, restore, verify, extract, delete, forget, prune, consolidate
    description: str
    state: str  # queued, running, cancelling, succeeded, failed, cancelled
    queue_position: int = 0  # 1 = next to start; 0 when not waiting for a backup slot
    progress: Progress | None = None
    error: str | None = None
    summary: str = ""  # one line on the outcome, once finished (jobs.summary)
    log: tuple[str, ...] = ()
    volume: VolumeRef | None = None  # the volume a backup is of
    point: str | None = None  # the point it made, restored, verified or extracted from
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    # The job's result once succeeded: PointInfo (backup, consolidate), RestoreReport,
    # VerifyReport, ExtractReport, list[str] (delete), ForgetReport, PruneReport,
    # CopyReport, a dict (a delta restore: engine/delta.py's report).
    result: Any = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def volume_key(self) -> str | None:
        return str(self.volume) if self.volume is not None else None

    @property
    def phase(self) -> str:
        if self.progress is not None:
            return self.progress.phase
        return "queued" if self.state == "queued" else ""

    @property
    def done(self) -> int:
        return self.progress.done if self.progress else 0

    @property
    def total(self) -> int | None:
        return self.progress.total if self.progress else None

    @property
    def rate(self) -> float:
        return self.progress.rate if self.progress else 0.0

    @property
    def eta(self) -> float | None:
        return self.progress.eta if self.progress else None

    @property
    def read(self) -> int:
        return self.progress.read if self.progress else 0

    @property
    def stored(self) -> int:
        return self.progress.stored if self.progress else 0

    @property
    def deduplicated(self) -> int:
        return self.progress.deduplicated if self.progress else 0

    @property
    def unit(self) -> str:
        """What done and total count: bytes, or items ("points")."""
        return self.progress.unit if self.progress else "bytes"

    @property
    def elapsed(self) -> float:
        """Seconds it ran: to its end once finished, else as its progress last said."""
        if self.finished and self.ended is not None:
            return max(0.0, self.ended - (self.started or self.created))
        return self.progress.elapsed if self.progress else 0.0

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


#: The page size of list_history when none is asked for, and the largest one served.
HISTORY_PAGE_SIZE = 100
MAX_HISTORY_PAGE_SIZE = 1000


@dataclass(frozen=True)
class HistoryPage:
    """One page of the job history, newest first. ``next_page_token`` asks for the page
    after it ("" on the last page)."""

    jobs: list[JobRecord]
    next_page_token: str = ""


# ---------------------------------------------------------------------------- schedules

#: How old a volume's last good backup may get when no schedule of it says otherwise.
LAST_GOOD_DEFAULT_AGE = 24 * 3600.0


@dataclass(frozen=True)
class LastGoodBackup:
    """The newest successful backup of a volume in the job history, and how old it may get:
    twice its schedule's interval (or the time between its cron slots), else 24 hours."""

    volume: str  # cluster/namespace/name
    ended_at: float | None  # None: the history holds no successful backup of it
    allowed_age: float = LAST_GOOD_DEFAULT_AGE  # seconds
    schedule: str | None = None  # the active schedule that sets allowed_age, if any
    scheduled_since: float | None = None  # when that schedule was made

    def overdue(self, now: float) -> bool:
        """Older than allowed. A volume never backed up is late only when a schedule should
        have backed it up by now; without a schedule nothing was expected."""
        if self.ended_at is not None:
            return now - self.ended_at > self.allowed_age
        if self.scheduled_since is None:
            return False
        return now - self.scheduled_since > self.allowed_age
