"""The one interface between the terminal UI and lamina's backend.

The UI sees only the plain records defined here and ids (point ids, job ids); no live
engine object crosses this line, so a remote implementation (gRPC) can stand in for
``InProcessClient`` without touching a screen. Every method may block: the UI calls them
from worker threads only. Failures are raised as ``LaminaError`` with one plain line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lamina.backend.errors import LaminaError, UsageError
from lamina.backend.service import Job, JobState, PointInfo, Service, VerifyReport
from lamina.backend.units import plural

__all__ = [
    "Capabilities",
    "Cluster",
    "ClusterCheck",
    "FileEntry",
    "InProcessClient",
    "JobView",
    "LaminaClient",
    "LaminaError",
    "Point",
    "RepositorySummary",
    "Volume",
    "volume_key",
]

FINISHED_STATES = ("succeeded", "failed", "cancelled")


def volume_key(cluster: str, namespace: str, name: str) -> str:
    """How a volume is named across the interface: ``cluster/namespace/name``."""
    return f"{cluster}/{namespace}/{name}"


@dataclass(frozen=True)
class RepositorySummary:
    url: str
    id: str
    encrypted: bool
    compression: str
    server: str | None = None  # the lamina server the repository is reached through


@dataclass(frozen=True)
class Capabilities:
    """Which optional operations this backend offers; the UI hides the others."""

    browse: bool = False
    extract: bool = False
    mount: bool = False
    delete: bool = False
    protect: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str
    kind: str  # "kubernetes" or "local"
    current: bool  # the kubeconfig's current context
    server: str | None
    namespace: str | None = None


@dataclass(frozen=True)
class ClusterCheck:
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class Volume:
    """A volume of a cluster, with what the repository holds of it."""

    cluster: str
    namespace: str
    name: str
    mode: str
    capacity: int
    storage_class: str
    cbt: bool
    phase: str
    in_cluster: bool  # False: only its backups remain (the volume is gone or not listed)
    last_backup: str | None = None  # ISO time of the newest point
    last_point: str | None = None
    chain_length: int = 0  # points in the newest point's chain
    points: int = 0  # all points of the volume
    stored: int = 0  # bytes uploaded by this volume's points

    @property
    def key(self) -> str:
        return volume_key(self.cluster, self.namespace, self.name)


@dataclass(frozen=True)
class Point:
    id: str
    parent: str | None
    kind: str  # "full" or "incremental"
    volume: str  # volume_key()
    created: str  # ISO 8601, UTC
    capacity: int
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    bytes_deduplicated: int
    bytes_uploaded: int
    duration: float
    image_digest: str
    snapshot_handle: str | None
    verify_state: str  # "", "verifying", "ok" or "corrupt"
    protected: bool = False  # kept by every retention policy and delete
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def changed_share(self) -> float:
        """The share of the volume this point had to read."""
        return self.bytes_read / self.capacity if self.capacity else 0.0


@dataclass(frozen=True)
class JobView:
    """A job as the UI sees it at one moment."""

    id: str
    kind: str  # "backup", "restore", "verify", "extract"
    description: str
    state: str  # queued, running, succeeded, failed, cancelled
    phase: str = ""
    done: int = 0
    total: int | None = None
    rate: float = 0.0
    eta: float | None = None
    read: int = 0
    stored: int = 0
    deduplicated: int = 0
    elapsed: float = 0.0
    error: str | None = None
    summary: str = ""  # one line on the outcome
    log: tuple[str, ...] = ()
    volume: str | None = None  # the volume a backup is of
    point: str | None = None  # the point it made, restored, verified or extracted from
    created: float = 0.0
    unit: str = "bytes"  # what done and total count: bytes, or items ("points")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


@dataclass(frozen=True)
class FileEntry:
    """A file or folder inside a point's filesystem."""

    path: str  # absolute inside the volume, "/" separated
    name: str
    kind: str  # "dir", "file", "symlink" or "other"
    size: int
    mtime: float  # seconds since the epoch
    mode: int = 0
    target: str | None = None  # a symlink's target


class LaminaClient(Protocol):
    """What the terminal UI needs from a backend. Every call may block."""

    def repository(self) -> RepositorySummary: ...

    def capabilities(self) -> Capabilities: ...

    def list_clusters(self) -> list[Cluster]: ...

    def check_clusters(
        self, names: Sequence[str] | None = None, timeout: float = 3.0
    ) -> dict[str, ClusterCheck]: ...

    def list_volumes(self, cluster: str, namespace: str | None = None) -> list[Volume]: ...

    def list_points(self, volume: str | None = None) -> list[Point]: ...

    def chain(self, point_id: str) -> list[Point]: ...

    def start_backup(self, cluster: str, namespace: str, name: str) -> str: ...

    def start_verify(self, point_id: str, deep: bool = False) -> str: ...

    def start_restore(self, point_id: str, target: str, overwrite: bool = False) -> str: ...

    def jobs(self) -> list[JobView]: ...

    def job(self, job_id: str) -> JobView: ...

    def cancel_job(self, job_id: str) -> None: ...

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        """Call ``listener`` (from any thread) on every change of the job; returns unwatch."""
        ...

    def list_files(self, point_id: str, path: str) -> list[FileEntry]:
        """The entries of a folder inside a point's filesystem."""
        ...

    def read_file(self, point_id: str, path: str, limit: int) -> bytes:
        """Up to ``limit`` bytes from the start of a file (for a preview)."""
        ...

    def start_extract(self, point_id: str, paths: Sequence[str], to_dir: str) -> str: ...

    def start_delete(self, point_id: str) -> str:
        """Delete a point; points built on it keep restoring as before."""
        ...

    def set_protected(self, point_id: str, protected: bool) -> None: ...

    def mount(self, point_id: str, mountpoint: str) -> str: ...

    def unmount(self, point_id: str) -> None: ...

    def mounts(self) -> dict[str, str]:
        """Mounted points: point id -> mountpoint."""
        ...


# ---------------------------------------------------------------------------- in process


def _point(info: PointInfo, verify_state: str) -> Point:
    s = info.stats
    return Point(
        id=info.id,
        parent=info.parent,
        kind=info.kind,
        volume=volume_key(info.volume.cluster, info.volume.namespace, info.volume.name),
        created=info.created,
        capacity=info.capacity,
        bytes_read=int(s.get("bytes_read", 0)),
        bytes_new=int(s.get("bytes_new", 0)),
        bytes_stored=int(s.get("bytes_stored", 0)),
        bytes_deduplicated=int(s.get("bytes_deduplicated", 0)),
        bytes_uploaded=int(s.get("bytes_uploaded", 0)),
        duration=float(s.get("duration_seconds", 0.0)),
        image_digest=info.image_digest,
        snapshot_handle=info.snapshot_handle,
        verify_state=verify_state,
        protected=bool(getattr(info, "protected", False)),
        manifest=info.manifest,
    )


def _chain_length(point: PointInfo, by_id: dict[str, PointInfo]) -> int:
    length, current = 0, point
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        length += 1
        parent = by_id.get(current.parent) if current.parent else None
        current = parent  # type: ignore[assignment]
    return length


def volumes_with_backups(
    cluster: str, namespace: str | None, listed: Sequence[Any], points: Sequence[PointInfo]
) -> list[Volume]:
    """The cluster's volumes with their backups, then volumes that only have backups left.

    ``listed`` holds the cluster's volumes (anything with namespace, name, mode, capacity,
    storage_class, cbt and phase): both clients build their rows here.
    """
    points = [p for p in points if p.volume.cluster == cluster]
    by_id = {p.id: p for p in points}
    by_volume: dict[tuple[str, str], list[PointInfo]] = {}
    for p in points:
        by_volume.setdefault((p.volume.namespace, p.volume.name), []).append(p)

    def backed_up(ns: str, name: str) -> dict[str, Any]:
        mine = by_volume.get((ns, name), [])
        if not mine:
            return {}
        newest = max(mine, key=lambda p: p.created)
        return {
            "last_backup": newest.created,
            "last_point": newest.id,
            "chain_length": _chain_length(newest, by_id),
            "points": len(mine),
            "stored": sum(int(p.stats.get("bytes_uploaded", 0)) for p in mine),
        }

    out = [
        Volume(
            cluster=cluster,
            namespace=v.namespace,
            name=v.name,
            mode=v.mode,
            capacity=v.capacity,
            storage_class=v.storage_class,
            cbt=v.cbt,
            phase=v.phase,
            in_cluster=True,
            **backed_up(v.namespace, v.name),
        )
        for v in listed
    ]
    seen = {(v.namespace, v.name) for v in listed}
    for ns, name in sorted(by_volume):
        if (ns, name) in seen or (namespace and ns != namespace):
            continue
        newest = max(by_volume[(ns, name)], key=lambda p: p.created)
        out.append(
            Volume(
                cluster=cluster,
                namespace=ns,
                name=name,
                mode="",
                capacity=newest.capacity,
                storage_class="",
                cbt=False,
                phase="backups only",
                in_cluster=False,
                **backed_up(ns, name),
            )
        )
    return out


def _summary(job: Job) -> tuple[str, str | None]:
    """One line on a finished job's outcome, and the point it concerns."""
    result = job.result
    if job.state != JobState.SUCCEEDED:
        return (job.error or job.state), None
    if job.kind == "delete" and isinstance(result, list):
        folded = f"; its data folded into {', '.join(result)}" if result else ""
        return f"point deleted{folded}", None
    if isinstance(result, PointInfo):
        s = result.stats
        return (
            f"point {result.id}: read {_size(s.get('bytes_read', 0))}, "
            f"stored {_size(s.get('bytes_stored', 0))}, "
            f"deduplicated {_size(s.get('bytes_deduplicated', 0))}",
            result.id,
        )
    if isinstance(result, VerifyReport):
        if result.ok:
            return f"{plural(result.pieces, 'piece')} checked, no problem found", None
        return f"{plural(len(result.problems), 'problem')}: {result.problems[0]}", None
    if isinstance(result, dict) and "bytes_written" in result:
        return (
            f"restored {_size(result['bytes_written'])} to {result.get('target', '')}",
            str(result.get("point", "")) or None,
        )
    if hasattr(result, "files") and hasattr(result, "skipped"):  # an extract report
        text = (
            f"extracted {plural(result.files, 'file')}, {plural(result.directories, 'folder')}, "
            f"{_size(result.bytes)} to {result.target}"
        )
        if result.skipped:
            text += f"; skipped {len(result.skipped)}: {result.skipped[0].path}: {result.skipped[0].reason}"
        return text, None
    return "done", None


def _size(n: Any) -> str:
    from .formatting import size

    return size(int(n))


class InProcessClient:
    """The backend in this process: ``lamina.backend.service.Service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._verify_state: dict[str, str] = {}
        self._job_subjects: dict[str, tuple[str | None, str | None]] = {}

    # ------------------------------------------------------------------ repository

    def repository(self) -> RepositorySummary:
        info = self.service.info()
        return RepositorySummary(info.url, info.id, info.encrypted, info.compression)

    def capabilities(self) -> Capabilities:
        s = self.service
        return Capabilities(
            browse=callable(getattr(s, "list_files", None)),
            extract=callable(getattr(s, "start_extract", None)),
            mount=callable(getattr(s, "mount", None)) and callable(getattr(s, "unmount", None)),
            delete=callable(getattr(s, "start_delete", None)),
            protect=callable(getattr(s, "protect", None))
            and callable(getattr(s, "unprotect", None)),
        )

    # ------------------------------------------------------------------ clusters

    def list_clusters(self) -> list[Cluster]:
        return [
            Cluster(c.name, c.kind, c.current, c.server, c.namespace)
            for c in self.service.list_clusters()
        ]

    def check_clusters(
        self, names: Sequence[str] | None = None, timeout: float = 3.0
    ) -> dict[str, ClusterCheck]:
        results = self.service.check_clusters(names, timeout=timeout)
        return {name: ClusterCheck(r.ok, r.detail, r.seconds) for name, r in results.items()}

    def list_volumes(self, cluster: str, namespace: str | None = None) -> list[Volume]:
        listed = self.service.list_cluster_volumes(cluster, namespace)
        return volumes_with_backups(cluster, namespace, listed, self.service.list_points())

    # ------------------------------------------------------------------ points

    def _verify(self, point_id: str) -> str:
        with self._lock:
            return self._verify_state.get(point_id, "")

    def list_points(self, volume: str | None = None) -> list[Point]:
        infos = self.service.list_points(volume)
        return [_point(p, self._verify(p.id)) for p in infos]

    def chain(self, point_id: str) -> list[Point]:
        return [_point(p, self._verify(p.id)) for p in self.service.chain(point_id)]

    # ------------------------------------------------------------------ jobs

    def _register(self, job: Job, volume: str | None, point: str | None) -> str:
        with self._lock:
            self._job_subjects[job.id] = (volume, point)
        return job.id

    def start_backup(self, cluster: str, namespace: str, name: str) -> str:
        try:
            job = self.service.start_volume_backup(cluster, namespace, name)
        except UsageError as e:
            # The data-mover command the service suggests, with this repository filled in.
            raise UsageError(
                str(e).replace("--repo REPO", f"--repo {self.service.repo_url}")
            ) from None
        return self._register(job, volume_key(cluster, namespace, name), None)

    def start_verify(self, point_id: str, deep: bool = False) -> str:
        point = self.service.get_point(point_id).id
        job = self.service.start_verify(point, deep=deep)
        with self._lock:
            self._verify_state[point] = "verifying"

        def record(j: Job) -> None:
            if not j.done:
                return
            state = ""
            if j.state == JobState.SUCCEEDED and isinstance(j.result, VerifyReport):
                state = "ok" if j.result.ok else "corrupt"
            elif j.state == JobState.FAILED:
                state = "corrupt"
            with self._lock:
                self._verify_state[point] = state

        job.subscribe(record)
        if job.done:
            record(job)
        return self._register(job, None, point)

    def start_restore(self, point_id: str, target: str, overwrite: bool = False) -> str:
        if not target.strip():
            raise UsageError("give a file or device to restore to")
        job = self.service.start_restore(point_id, target, overwrite=overwrite)
        return self._register(job, None, point_id)

    def _view(self, job: Job) -> JobView:
        with self._lock:
            volume, point = self._job_subjects.get(job.id, (None, None))
        if volume is None and isinstance(job.result, PointInfo):  # a backup from before the UI
            v = job.result.volume
            volume = volume_key(v.cluster, v.namespace, v.name)
        p = job.progress
        summary, made = _summary(job) if job.done else ("", None)
        return JobView(
            id=job.id,
            kind=job.kind,
            description=job.description,
            state=job.state,
            phase=p.phase if p else "",
            done=p.done if p else 0,
            total=p.total if p else None,
            rate=p.rate if p else 0.0,
            eta=p.eta if p else None,
            read=p.read if p else 0,
            stored=p.stored if p else 0,
            deduplicated=p.deduplicated if p else 0,
            elapsed=((job.finished or 0.0) - job.created)
            if job.done
            else (p.elapsed if p else 0.0),
            error=job.error,
            summary=summary,
            log=tuple(job.log),
            volume=volume,
            point=made or point,
            created=job.created,
            unit=p.unit if p else "bytes",
        )

    def jobs(self) -> list[JobView]:
        return [self._view(j) for j in self.service.jobs()]

    def job(self, job_id: str) -> JobView:
        return self._view(self.service.job(job_id))

    def cancel_job(self, job_id: str) -> None:
        self.service.job(job_id).cancel()

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        job = self.service.job(job_id)

        def on_change(j: Job) -> None:
            listener(self._view(j))

        unwatch = job.subscribe(on_change)
        listener(self._view(job))  # the state it is in now, in case it changed before
        return unwatch

    # ------------------------------------------------------------------ files

    def _optional(self, name: str, what: str) -> Callable[..., Any]:
        method = getattr(self.service, name, None)
        if not callable(method):
            raise UsageError(f"this lamina cannot {what}")
        return method  # type: ignore[no-any-return]

    def list_files(self, point_id: str, path: str) -> list[FileEntry]:
        entries = self._optional("list_files", "browse files")(point_id, path)
        folder = "/" + path.strip("/")
        return [_file_entry(e, folder) for e in entries]

    def read_file(self, point_id: str, path: str, limit: int) -> bytes:
        files = self._optional("point_files", "read files")(point_id)
        entry = files.lookup(path)
        if entry.kind != "file":
            raise UsageError(f"{path} is not a regular file")
        return bytes(files.read(entry, 0, limit))

    def start_extract(self, point_id: str, paths: Sequence[str], to_dir: str) -> str:
        if not paths:
            raise UsageError("mark files or folders to extract first")
        if not to_dir.strip():
            raise UsageError("give a folder to extract to")
        job = self._optional("start_extract", "extract files")(point_id, list(paths), to_dir)
        return self._register(job, None, point_id)

    def start_delete(self, point_id: str) -> str:
        job = self._optional("start_delete", "delete points")(point_id)
        return self._register(job, None, point_id)

    def set_protected(self, point_id: str, protected: bool) -> None:
        if protected:
            self._optional("protect", "protect points")(point_id)
        else:
            self._optional("unprotect", "unprotect points")(point_id)

    def mount(self, point_id: str, mountpoint: str) -> str:
        result = self._optional("mount", "mount points")(point_id, mountpoint)
        return str(getattr(result, "mountpoint", None) or mountpoint)

    def unmount(self, point_id: str) -> None:
        where = self.mounts().get(point_id)
        if where is None:
            raise UsageError(f"point {point_id} is not mounted")
        self._optional("unmount", "unmount points")(where)

    def mounts(self) -> dict[str, str]:
        """Mounted points of the repository, also those mounted before this UI started."""
        list_mounts = getattr(self.service, "list_mounts", None)
        listed = list_mounts() if callable(list_mounts) else []
        return {m.point: m.mountpoint for m in listed if m.point is not None}


FILE_KINDS = {"file": "file", "dir": "dir", "symlink": "symlink"}


def _file_entry(entry: Any, folder: str) -> FileEntry:
    """A filesystem entry of the backend (lamina.backend.fsread.Entry) as a FileEntry."""
    name = str(entry.name)
    return FileEntry(
        path=folder.rstrip("/") + "/" + name,
        name=name,
        kind=FILE_KINDS.get(str(entry.kind), "other"),
        size=int(entry.size),
        mtime=int(entry.mtime_ns) / 1e9,
        mode=int(entry.mode),
        target=entry.link_target,
    )
