"""The service layer: the one door to the engine for the CLI, the TUI, FUSE and the gRPC API.

Front ends call this module and get plain dataclasses back. They never see storage
backends, the repository format or boto3; long operations run as Jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import (
    CatalogError,
    HistoryQuery,
    JobNotFound,
    JobRecord,
    default_catalog_url,
    open_catalog,
)
from ..engine import lifecycle, locks
from ..engine import pipelines as engine
from ..engine.extents import Range
from ..engine.fingerprints import DEFAULT_FINGERPRINT_BLOCK
from ..engine.image import DEFAULT_CACHE, DEFAULT_READAHEAD, ImageReader
from ..engine.locks import LockInfo
from ..engine.pipelines import BackupRequest, VerifyReport, VolumeRef
from ..engine.prune import PruneReport, prune
from ..engine.repository import DEFAULT_GRID, DEFAULT_ZSTD_LEVEL, Point, Repository
from ..engine.safewrite import (
    TargetError,
    check_folder_target,
    check_image_target,
)
from ..engine.storage import open_storage
from ..errors import Cancelled, LaminaError, PasswordRequired, UsageError
from ..limits import (
    checked_context,
    checked_labels,
    checked_name,
    checked_note,
    checked_point_ref,
    checked_snapshot_handle,
    checked_volume_parts,
    checked_volume_text,
    shown,
)
from ..local.cluster import LocalCluster
from ..progress import Progress
from ..units import plural
from . import clusters
from .accounting import JobAccounting, RequestCounts
from .clusters import (
    LOCAL,
    MADE_BY_BACKUP,
    add_local_volume,
    local_volumes,
    plan_local_backup,
)
from .history import JOB_KINDS, history_cursor, history_token
from .jobs import BackupCaps, Job, JobRunner, VerifyStates, view_of
from .models import (
    HISTORY_PAGE_SIZE,
    MAX_HISTORY_PAGE_SIZE,
    Capabilities,
    ClusterSummary,
    ClusterVolume,
    CompareReport,
    ForgetDecision,
    ForgetReport,
    HistoryPage,
    JobView,
    LastGoodBackup,
    LocalSnapshotInfo,
    MountInfo,
    PointInfo,
    Reachability,
    RepositoryInfo,
    RestoreReport,
    VolumeInfo,
)
from .mounts import (
    MountRecord,
    live_records,
    mount_path,
    remove_record,
    repo_key,
    start_mount_process,
    unmount,
    write_record,
)
from .recorder import JobRecorder, reconcile

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..catalog import Catalog
    from ..engine.extract import ExtractReport
    from ..engine.fsview import PointFiles, RepositoryView
    from .files import FileEntry
    from .pointlist import PointList
    from .schedules import ScheduleInfo, Schedules

log = logging.getLogger(__name__)


class FixedRanges(list[Range]):
    """Ranges known in full when the backup is asked for (a file, a request), callable like
    a live range source; only these can be sent on to a server."""

    def __call__(self) -> list[Range]:
        return self


def parse_volume(volume: str | VolumeRef) -> VolumeRef:
    """A volume name as typed, or a VolumeRef, checked part by part (backend/limits.py)."""
    ref = (
        volume.checked()
        if isinstance(volume, VolumeRef)
        else VolumeRef.parse(checked_volume_text(volume))
    )
    checked_volume_parts(ref.cluster, ref.namespace, ref.name)
    return ref


def check_cluster_volume(cluster: str, namespace: str, name: str) -> VolumeRef:
    """A cluster volume named by its context, namespace and name, checked (backend/limits.py)."""
    checked_context(cluster)
    checked_name(namespace, "namespace")
    checked_name(name, "volume name")
    return VolumeRef.of(cluster, namespace, name)


def check_backup_options(
    volume: str | VolumeRef,
    *,
    parent: str = "auto",
    snapshot_handle: str | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[VolumeRef, str, dict[str, str]]:
    """A backup's names, parent and labels checked (backend/limits.py): the volume, the
    parent ("auto", "none" or a point id) and the labels to record."""
    ref = parse_volume(volume)
    if snapshot_handle is not None:
        checked_snapshot_handle(snapshot_handle)
    if parent not in ("auto", "none"):
        parent = checked_point_ref(parent)
    return ref, parent, checked_labels(labels or {})


def read_password_file(path: str | None) -> bytes | None:
    """The password from ``path`` or $LAMINA_PASSWORD_FILE (one trailing newline dropped)."""
    path = path or os.environ.get("LAMINA_PASSWORD_FILE")
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise UsageError(f"password file {path} is empty")
    return data


class _Held:
    """A held lock as a context manager (None: read without a lock)."""

    def __init__(self, lock: locks.Lock | None) -> None:
        self.lock = lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def check(self) -> None:
        """Raise unless the lock is still held (a no-op when reading without a lock)."""
        if self.lock is not None:
            self.lock.check_held()

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def init_repository(
    url: str,
    *,
    grid_size: int = DEFAULT_GRID,
    password: bytes | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    object_lock_days: int = 0,
    fingerprint_block: int = DEFAULT_FINGERPRINT_BLOCK,
) -> RepositoryInfo:
    if "://" not in url or url.startswith("file://"):
        # A folder here: refuse one that cannot be written before anything is made.
        check_folder_target(url.removeprefix("file://"))
    storage = open_storage(url, create=not object_lock_days)
    repo = Repository.init(
        storage,
        grid_size=grid_size,
        password=password,
        zstd_level=zstd_level,
        object_lock_days=object_lock_days,
        fingerprint_block=fingerprint_block,
    )
    return _repo_info(repo)


def _repo_info(repo: Repository) -> RepositoryInfo:
    c = repo.config
    return RepositoryInfo(
        url=repo.url,
        id=repo.id,
        version=int(c["version"]),
        grid_size=repo.grid_size,
        encrypted=repo.encrypted,
        compression=f"zstd level {repo.zstd_level}",
        created=str(c["created"]),
        object_lock_days=repo.retention_days,
        fingerprint_block=repo.fingerprint_block,
    )


#: The most volumes one last_good_backups() call answers for.
MAX_VOLUMES_ASKED = 10_000


def _recorded_repository(url: str) -> str:
    """How a job's repository is recorded: a relative folder as its absolute path, so that
    the history of ``--repo repo`` is found from any other folder."""
    if "://" not in url and url and not os.path.isabs(url):
        return os.path.abspath(url)
    return url


def _repository_forms(url: str) -> list[str]:
    """The spellings a local repository is recorded under: as given, as an absolute path
    and as a file:// URL."""
    forms = [url]
    if url.startswith("file://"):
        forms.append(url.removeprefix("file://"))
    elif "://" not in url and url:
        path = os.path.abspath(url)
        forms += [path, f"file://{path}"]
    return list(dict.fromkeys(forms))


class Service:
    """One repository, opened once, shared by every front end in this process."""

    def __init__(
        self,
        repo_url: str,
        *,
        password: bytes | None = None,
        kubeconfig: str | None = None,
        local_root: str | None = None,
        lock_wait: float = 600.0,
        ask_password: Callable[[], bytes] | None = None,
        backup_caps: BackupCaps | None = None,
        catalog: str | None = None,
        origin: str = "cli",
    ) -> None:
        self.repo_url = repo_url
        self._password = password
        # Asked once, when an encrypted repository is opened without a password.
        self._ask_password = ask_password
        self.kubeconfig = kubeconfig
        self.local_root = local_root
        self.lock_wait = lock_wait
        self._repo: Repository | None = None
        self._open_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._mounts: dict[str, MountInfo] = {}
        self._created_mountpoints: set[str] = set()
        self._jobs_lock = threading.Lock()
        # The backup caps and their queue: one per service, shared by every front end.
        self._runner = JobRunner(backup_caps)
        self._verify_states = VerifyStates()
        # Every job is recorded in the job-history catalog, its requests counted.
        self.accounting = JobAccounting()
        self._recorder = JobRecorder(
            catalog or default_catalog_url(),
            repository=_recorded_repository(repo_url),
            origin=origin,
            counts=self.accounting.counts,
        )
        # The catalog's copy of the point list (docs/catalog.md), opened on first listing.
        self._point_list: PointList | None = None
        self._point_list_catalog: Catalog | None = None
        self._point_list_off = False

    # ------------------------------------------------------------------ repository

    @property
    def repo(self) -> Repository:
        with self._open_lock:
            if self._repo is None:
                storage = open_storage(self.repo_url)
                try:
                    self._repo = Repository.open(storage, password=self._password)
                except PasswordRequired:
                    if self._ask_password is None:
                        raise
                    self._password = self._ask_password()
                    self._repo = Repository.open(storage, password=self._password)
            return self._repo

    def info(self) -> RepositoryInfo:
        return _repo_info(self.repo)

    def capabilities(self) -> Capabilities:
        """Everything: a service in this process has the repository itself."""
        return Capabilities(
            browse=True, read_files=True, extract=True, delete=True, mount=True, protect=True
        )

    @property
    def password(self) -> bytes | None:
        """The password the repository was opened with (given, or asked for)."""
        return self._password

    def close(self) -> None:
        """Close browsing views (giving back their shared locks), then the repository."""
        self.close_idle_views()
        self._recorder.close()
        if self._point_list_catalog is not None:
            self._point_list_catalog.close()
            self._point_list_catalog = None
            self._point_list = None
        if self._repo is not None:
            self._repo.close()

    # ------------------------------------------------------------------ queries

    def _info(self, point: Point, protected: set[str] | None = None) -> PointInfo:
        """A point as front ends see it: protected or not, and what its last verify said."""
        if protected is None:
            protected = lifecycle.protected_ids(self.repo)
        return PointInfo.of(point, point.id in protected, self._verify_states.get(point.id))

    def _catalog_point_list(self) -> PointList | None:
        """The point list through the catalog, opened once; None when the catalog is off or
        cannot be opened (points are then listed from the repository alone)."""
        repo = self.repo
        with self._open_lock:
            if self._point_list is None and not self._point_list_off:
                from ..catalog.store import Catalog
                from .pointlist import PointList

                url = self._recorder.catalog_url
                try:
                    if not self._recorder.enabled:
                        raise CatalogError("the catalog is off")
                    self._point_list_catalog = Catalog.open(url, reap=False)
                except (CatalogError, UsageError) as e:
                    log.info("listing points without the catalog: %s", e)
                    self._point_list_off = True
                else:
                    self._point_list = PointList(repo, self._point_list_catalog)
            return self._point_list

    def _current_point_list(self) -> PointList | None:
        """The catalog's point list, brought up to date with the repository; None when
        there is none or the catalog fails (it is then bypassed, never trusted)."""
        point_list = self._catalog_point_list()
        if point_list is None:
            return None
        try:
            point_list.refresh()
        except CatalogError as e:
            log.warning("listing points without the catalog: %s", e)
            return None
        return point_list

    def _points(self, volume: VolumeRef | None = None) -> list[Point]:
        """Every point (of ``volume``), oldest first."""
        point_list = self._current_point_list()
        if point_list is not None:
            key = None if volume is None else (volume.cluster, volume.namespace, volume.name)
            try:
                return [Point(m) for m in point_list.manifests(key)]
            except CatalogError as e:
                log.warning("listing points without the catalog: %s", e)
        points = self.repo.list_points()
        if volume is None:
            return points
        wanted = volume.as_dict()
        return [p for p in points if p.manifest["volume"] == wanted]

    def list_points(self, volume: str | VolumeRef | None = None) -> list[PointInfo]:
        protected = lifecycle.protected_ids(self.repo)
        ref = parse_volume(volume) if volume is not None else None
        return [self._info(p, protected) for p in self._points(ref)]

    def rebuild_point_list(self) -> int:
        """Recreate the catalog's copy of this repository's point list from the repository;
        the number of points. Raises CatalogError when the catalog is off or fails."""
        from ..catalog.store import Catalog
        from .pointlist import PointList

        catalog = Catalog.open(self._recorder.catalog_url, reap=False)
        try:
            return PointList(self.repo, catalog).rebuild()
        finally:
            catalog.close()

    def find_point(self, point_ref: str) -> Point:
        """A point by id or unique prefix; anything but hex digits is refused first."""
        return self.repo.find_point(checked_point_ref(point_ref))

    def get_point(self, point_ref: str) -> PointInfo:
        return self._info(self.find_point(point_ref))

    def chain(self, point_ref: str) -> list[PointInfo]:
        """The point and its ancestors, newest first."""
        protected = lifecycle.protected_ids(self.repo)
        return [self._info(p, protected) for p in self.repo.chain(self.find_point(point_ref))]

    def list_volumes(self) -> list[VolumeInfo]:
        """Every volume with points, summarised: from the catalog in one query when it has
        the point list, so that only each volume's newest point becomes an object."""
        protected = lifecycle.protected_ids(self.repo)
        point_list = self._current_point_list()
        if point_list is not None:
            try:
                summaries = point_list.summaries()
            except CatalogError as e:
                log.warning("listing points without the catalog: %s", e)
            else:
                out = []
                for s in summaries:
                    newest = self._info(Point(s.newest), protected)
                    out.append(
                        VolumeInfo(
                            volume=newest.volume,
                            points=s.points,
                            last_point=newest,
                            capacity=newest.capacity,
                            stored_bytes=s.stored_bytes,
                            chain_length=s.chain_length,
                        )
                    )
                return sorted(out, key=lambda v: str(v.volume))
        return volume_summaries([self._info(p, protected) for p in self.repo.list_points()])

    def open_image(
        self,
        point_ref: str,
        *,
        cache_bytes: int = DEFAULT_CACHE,
        readahead_bytes: int = DEFAULT_READAHEAD,
    ) -> ImageReader:
        """Random access to a point's volume, fetched lazily (see backend/image.py)."""
        lock = locks.acquire(
            self.repo, locks.SHARED, f"read point {point_ref}", wait=self.lock_wait, optional=True
        )
        try:
            point = self.find_point(point_ref)  # under the lock: never a stale view
            reader = ImageReader(
                self.repo, point, cache_bytes=cache_bytes, readahead_bytes=readahead_bytes
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            reader.on_close(lock.release)
        return reader

    # ------------------------------------------------------------------ clusters

    def list_clusters(self) -> list[ClusterSummary]:
        """The kubeconfig's contexts (none when there is no kubeconfig), then the local cluster."""
        return clusters.list_clusters(self.kubeconfig, self.local_root)

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        """Whether each cluster answers, probed in parallel; never hangs past the timeout."""
        return clusters.check_clusters(self.kubeconfig, self.local_root, names, timeout=timeout)

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None, *, with_backups: bool = False
    ) -> list[ClusterVolume]:
        """The volumes of a cluster. ``with_backups``: each with what the repository holds
        of it, then the volumes of the cluster that only have backups left."""
        listed = self._cluster_volumes(cluster, namespace)
        if not with_backups:
            return listed
        return volumes_with_backups(cluster, namespace, listed, self.list_volumes())

    def _cluster_volumes(self, cluster: str, namespace: str | None) -> list[ClusterVolume]:
        checked_context(cluster)
        if namespace:
            checked_name(namespace, "namespace")
        if cluster == LOCAL:
            return local_volumes(self.local_root, namespace) if self.local_root else []
        from ..kube.cluster import KubeCluster
        from ..kube.volumes import list_volumes

        with KubeCluster.open(cluster, self.kubeconfig) as kube:
            listing = list_volumes(kube, namespace)
        return [
            ClusterVolume(
                cluster=cluster,
                namespace=v.namespace,
                name=v.name,
                mode=v.volume_mode,
                capacity=v.capacity_bytes or 0,
                storage_class=v.storage_class or "",
                driver=v.driver or "",
                cbt=bool(v.cbt),
                phase=v.phase,
            )
            for v in listing.volumes
        ]

    def add_local_volume(self, namespace: str, name: str, source: str) -> ClusterVolume:
        if not self.local_root:
            raise UsageError("no local cluster folder: give --local-root or set LAMINA_LOCAL_ROOT")
        add_local_volume(self.local_root, namespace, name, source)
        (volume,) = [v for v in local_volumes(self.local_root, namespace) if v.name == name]
        return volume

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> Job:
        """Snapshot a cluster volume, ask CBT what to read, and back up exactly that."""
        check_cluster_volume(cluster, namespace, name)
        if cluster != LOCAL:
            raise UsageError(
                f"volumes of cluster {cluster} are backed up by a data-mover Job running in the cluster: "
                f"lamina kube datamover --context {cluster} --namespace {namespace} {name} "
                f"--repo {self.repo_url} --submit"
            )
        ref = VolumeRef.of(LOCAL, namespace, name)
        if not self.local_root:
            raise UsageError("no local cluster folder: give --local-root or set LAMINA_LOCAL_ROOT")
        root = self.local_root

        def run(job: Job) -> PointInfo:
            try:
                return backup(job)
            finally:
                self._tidy_local_snapshots(job)

        def backup(job: Job) -> PointInfo:
            lock = self._lock(job, locks.SHARED, f"backup of {ref}")
            try:
                # Under the lock: the base is chosen from a view no deleter has changed since.
                previous = [p for p in self.repo.list_points() if PointInfo.of(p).volume == ref]
                base = previous[-1] if previous else None
                base_handle = base.manifest.get("snapshot_handle") if base else None
                job._on_progress(Progress(phase="taking a snapshot", message="taking a snapshot"))
                plan = plan_local_backup(
                    root, namespace, name, base_handle, base.id if base else None
                )
            except BaseException:
                lock.release()
                raise
            job._log(f"snapshot {plan.snapshot_handle}; ranges from {plan.origin}")
            try:
                request = BackupRequest(
                    source=plan.source,
                    volume=ref,
                    parent=plan.parent,
                    changed_ranges=plan.changed_ranges,
                    changed_ranges_origin=plan.origin,
                    allocated_ranges=plan.allocated_ranges,
                    allocated_ranges_origin=plan.origin,
                    snapshot_handle=plan.snapshot_handle,
                )
                point = engine.backup(
                    self.repo,
                    request,
                    progress=job._on_progress,
                    cancelled=lambda: job.cancel_requested,
                    before_commit=lock.check,
                )
            finally:
                plan.close()
                lock.release()
            return PointInfo.of(point)

        return self._start("backup", f"back up {ref}", run, volume=ref)

    # ------------------------------------------------------------------ local snapshots
    # A local backup's snapshot is only worth keeping as the base of the volume's next
    # incremental: restores come from the repository.

    def _local_cluster(self) -> LocalCluster:
        if not self.local_root:
            raise UsageError("no local cluster folder: give --local-root or set LAMINA_LOCAL_ROOT")
        return LocalCluster(self.local_root)

    def _needed_snapshots(self) -> dict[str, str]:
        """Snapshot handle -> the newest point of a volume, whose next incremental starts there."""
        newest: dict[VolumeRef, PointInfo] = {}
        # From the repository itself, not the catalog's copy: snapshots are deleted by this.
        for point in self.repo.list_points():
            info = PointInfo.of(point)
            newest[info.volume] = info  # points come oldest first
        return {p.snapshot_handle: p.id for p in newest.values() if p.snapshot_handle}

    def list_local_snapshots(self) -> list[LocalSnapshotInfo]:
        """The local cluster's snapshots, each with the point that still needs it (if any)."""
        snapshots = self._local_cluster().list_snapshots()
        needed = self._needed_snapshots()
        return [LocalSnapshotInfo.of(s, needed.get(s.handle)) for s in snapshots]

    def prune_local_snapshots(self, *, backups_only: bool = False) -> list[LocalSnapshotInfo]:
        """Delete the local snapshots no point needs (with ``backups_only``: only those a
        backup took). A snapshot a running backup reads is kept. Returns what went."""
        cluster = self._local_cluster()
        removed = []
        for info in self.list_local_snapshots():
            if info.needed_by is not None or (backups_only and info.made_by != MADE_BY_BACKUP):
                continue
            if cluster.delete_snapshot(cluster.snapshot(info.namespace, info.name)):
                removed.append(info)
        return removed

    def _tidy_local_snapshots(self, job: Job) -> None:
        """After a local backup, cancelled or not: drop the snapshots backups took that no
        point needs any more (the previous base, or the new one of a failed backup)."""
        try:
            gone = self.prune_local_snapshots(backups_only=True)
        except LaminaError as e:
            job._log(f"old snapshots kept: {e}")
            return
        for info in gone:
            job._log(f"deleted snapshot {info.namespace}/{info.name}: no point needs it")

    # ------------------------------------------------------------------ mounts

    def mount(
        self, point_ref: str | None, mountpoint: str, *, cache_bytes: int = 512 * 1024 * 1024
    ) -> MountInfo:
        """Mount the repository (or one point) with FUSE in a background mount process.

        Returns once the mount answers. The mount is its own process, so it outlives
        nothing it should not: `unmount` (or `lamina umount`) ends it.
        """
        point = self.get_point(point_ref).id if point_ref else None
        where = mount_path(mountpoint)
        created = False
        if os.path.lexists(where) and not os.path.isdir(where):
            raise TargetError(f"mount point {where} is not a folder")
        if not os.path.lexists(where) and os.path.isdir(os.path.dirname(where)):
            try:
                os.mkdir(where, 0o755)  # the folder a front end suggested: removed on unmount
            except OSError as e:
                raise TargetError(
                    f"cannot make the mount point {where}: {e.strerror or e}"
                ) from None
            created = True
        try:
            pid = start_mount_process(
                self.repo_url,
                where,
                point=point,
                cache_bytes=cache_bytes,
                password=self._password,
                timeout=120.0,
            )
        except LaminaError:
            if created:
                os.rmdir(where)
            raise
        if created:
            self._created_mountpoints.add(where)
        info = MountInfo(where, point, pid, self.repo_url)
        if created:  # a restarted front end must remove the folder on unmount too
            write_record(MountRecord(where, point, info.pid, repo_key(self.repo_url), True))
        with self._jobs_lock:
            self._mounts[where] = info
        return info

    def unmount(self, mountpoint: str) -> None:
        where = mount_path(mountpoint)
        made = any(r.mountpoint == where and r.made_mountpoint for r in live_records())
        try:
            unmount(where)
        finally:
            with self._jobs_lock:
                self._mounts.pop(where, None)
        if where in self._created_mountpoints or made:
            self._created_mountpoints.discard(where)
            with contextlib.suppress(OSError):
                os.rmdir(where)

    def list_mounts(self) -> list[MountInfo]:
        """The lamina mounts of this repository on this machine that are still mounted:
        those this service started, and those of other processes (an earlier front end,
        `lamina mount`), found again from their records."""
        mine = repo_key(self.repo_url)
        found = {
            r.mountpoint: MountInfo(r.mountpoint, r.point, r.pid, self.repo_url)
            for r in live_records()
            if r.repo == mine
        }
        with self._jobs_lock:
            for gone in [m for m in self._mounts if not os.path.ismount(m)]:
                del self._mounts[gone]
            found.update(self._mounts)
            return sorted(found.values(), key=lambda m: m.mountpoint)

    def record_mount(self, mountpoint: str, point_ref: str | None) -> None:
        """Called by the mount process once it serves: other processes can find it."""
        point = self.get_point(point_ref).id if point_ref else None
        write_record(MountRecord(mountpoint, point, os.getpid(), repo_key(self.repo_url)))

    def forget_mount(self, mountpoint: str) -> None:
        remove_record(mountpoint, os.getpid())

    # ------------------------------------------------------------------ lifecycle

    def _lock(self, job: Job | None, kind: str, purpose: str, *, optional: bool = False) -> _Held:
        if kind == locks.EXCLUSIVE:
            self.close_idle_views()  # our own browsing must not hold up our own prune
        if job is not None:
            job._log(
                f"waiting for a {kind} repository lock" if kind == locks.EXCLUSIVE else "locking"
            )
        try:
            lock = locks.acquire(
                self.repo,
                kind,
                purpose,
                wait=self.lock_wait,
                optional=optional,
                cancelled=(lambda: job.cancel_requested) if job is not None else None,
            )
        except locks.RepositoryLocked:
            if job is not None and job.cancel_requested:
                raise Cancelled(f"{purpose} cancelled while waiting for the lock") from None
            raise
        return _Held(lock)

    def protect(self, point_ref: str, note: str = "") -> PointInfo:
        checked_note(note)
        point = self.find_point(point_ref)
        lifecycle.protect(self.repo, point, note)
        return self._info(point)

    def unprotect(self, point_ref: str) -> PointInfo:
        point = self.find_point(point_ref)
        lifecycle.unprotect(self.repo, point)
        return self._info(point)

    def start_delete(self, point_ref: str) -> Job:
        """Delete a point; its children absorb its extents so they resolve as before."""
        checked_point_ref(point_ref)

        def run(job: Job) -> list[str]:
            with self._lock(job, locks.EXCLUSIVE, "delete"):
                point = self.find_point(point_ref)
                children = lifecycle.delete_point(self.repo, point)
                job._log(
                    f"deleted point {point.id}; folded into {', '.join(children) or 'no child'}"
                )
            if self.local_root:
                self._tidy_local_snapshots(job)
            return children

        return self._start("delete", f"delete point {point_ref}", run, point=point_ref)

    def start_consolidate(self, point_ref: str, until: str | None = None) -> Job:
        checked_point_ref(point_ref)
        if until:
            checked_point_ref(until)

        def run(job: Job) -> PointInfo:
            with self._lock(job, locks.EXCLUSIVE, "consolidate"):
                point = self.find_point(point_ref)
                stop = self.find_point(until) if until else None
                merged = lifecycle.consolidate(self.repo, point, until=stop)
                return self._info(merged)

        down_to = f" down to {until}" if until else ""
        return self._start(
            "consolidate", f"consolidate point {point_ref}{down_to}", run, point=point_ref
        )

    def start_forget(
        self, policy: lifecycle.Policy, *, volume: str | None = None, dry_run: bool = False
    ) -> Job:
        """Apply a retention policy. The result lists every point with keep/remove and why."""
        ref = parse_volume(volume) if volume else None

        def run(job: Job) -> ForgetReport:
            with self._lock(job, locks.SHARED if dry_run else locks.EXCLUSIVE, "forget"):
                points = [
                    p for p in self.repo.list_points() if ref is None or p.volume == ref.as_dict()
                ]
                decisions = lifecycle.plan_forget(
                    points, policy, lifecycle.protected_ids(self.repo)
                )
                removed = (
                    [] if dry_run else lifecycle.forget(self.repo, decisions, progress=job._log)
                )
                report = ForgetReport(
                    dry_run=dry_run,
                    decisions=[
                        ForgetDecision(PointInfo.of(d.point), d.keep, list(d.reasons))
                        for d in decisions
                    ],
                    removed=removed,
                )
            if removed and self.local_root:
                self._tidy_local_snapshots(job)
            return report

        what = f"points of {volume}" if volume else "points"
        return self._start("forget", f"forget {what}{' (dry run)' if dry_run else ''}", run)

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> Job:
        if not 0.0 <= repack_below <= 1.0:
            raise UsageError("the repack threshold must be between 0 and 1 (for example 0.5)")

        def run(job: Job) -> PruneReport:
            with self._lock(job, locks.EXCLUSIVE, "prune"):
                return prune(self.repo, dry_run=dry_run, repack_below=repack_below, log=job._log)

        return self._start("prune", "prune" + (" (dry run)" if dry_run else ""), run)

    def list_locks(self) -> list[LockInfo]:
        return locks.list_locks(self.repo)

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]:
        return locks.remove_locks(self.repo, all_locks=all_locks)

    # ------------------------------------------------------------------ jobs

    def jobs(self) -> list[Job]:
        with self._jobs_lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def job_requests(self, job_id: str) -> RequestCounts | None:
        """The storage requests a job of this service made, with their estimated cost (None:
        a job this service did not run itself)."""
        return self.accounting.counts_of(job_id)

    @property
    def catalog_url(self) -> str:
        """The job-history catalog this service records its jobs in."""
        return str(self._recorder.catalog_url)

    def open_catalog_now(self) -> str | None:
        """Open the job-history catalog once, for a process that stays (``lamina serve``):
        its database layer loads and its schema is brought up to date now, not in the first
        client's call (about 0.25 s). Returns why it cannot be opened (None: it can); jobs
        still run then, and are recorded once it can."""
        if not self._recorder.enabled:
            return None
        try:
            open_catalog(self._recorder.catalog_url).close()
        except CatalogError as e:
            return str(e)
        return None

    @property
    def catalog_problem(self) -> str | None:
        """Why jobs of this service could not be recorded in the catalog (None: they were)."""
        return self._recorder.problem

    def history(
        self, query: HistoryQuery | None = None, *, catalog: str | None = None
    ) -> list[JobRecord]:
        """Jobs from the catalog, newest first. With the repository reachable, its points
        that no job recorded (the catalog was down) are filled in first. Raises CatalogError."""
        opened = open_catalog(catalog or self._recorder.catalog_url)
        try:
            if self.repo_url:
                reconcile(opened, self.repo_url, self.list_points())
            return opened.history(query)
        finally:
            opened.close()

    def list_history(
        self,
        *,
        volume: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        failed: bool = False,
        limit: int | None = None,
        page_token: str = "",
    ) -> HistoryPage:
        """One page of at most ``limit`` jobs from the catalog, newest first, filtered by
        volume, kind, start (``since``, seconds since the epoch) and failure. The first page
        is reconciled with the repository (see ``history``). Raises CatalogError."""
        if limit is not None and limit < 1:
            raise UsageError("the page size must be at least 1")
        size = min(limit or HISTORY_PAGE_SIZE, MAX_HISTORY_PAGE_SIZE)
        if kind is not None and kind not in JOB_KINDS:
            raise UsageError(f"no job kind {shown(kind)} (one of {', '.join(JOB_KINDS)})")
        query = HistoryQuery(
            volume=volume,
            kind=kind,
            since=since,
            failed=failed,
            limit=size + 1,  # one more tells whether there is a next page
            after=history_cursor(page_token) if page_token else None,
        )
        opened = open_catalog(self._recorder.catalog_url)
        try:
            if self.repo_url and not page_token:
                reconcile(opened, self.repo_url, self.list_points())
            records = opened.history(query)
        finally:
            opened.close()
        page, more = records[:size], len(records) > size
        token = history_token(page[-1]) if more else ""
        return HistoryPage(jobs=page, next_page_token=token)

    def get_job(self, job_id: str) -> JobRecord:
        """One job of the catalog with its state changes. A job this service ran carries its
        exact requests, even before its end reaches the catalog (a client of a server asks
        as soon as the job ends). Raises JobNotFound, CatalogError."""
        with self._jobs_lock:
            mine = self._jobs.get(job_id)
        try:
            opened = open_catalog(self._recorder.catalog_url)
            try:
                record = opened.job(job_id)
            finally:
                opened.close()
        except CatalogError:
            if mine is None:
                raise
            record = None
        if record is None and mine is not None:
            record = self._recorder.record_of(mine)
        if record is None:
            raise JobNotFound(f"no job {shown(job_id)} in the job history")
        counts = self.accounting.counts_of(job_id)
        if mine is not None and mine.done and counts is not None:
            record.requests = dict(counts.by_op)
            record.retries = counts.retries
            record.bytes_up = counts.bytes_up
            record.bytes_down = counts.bytes_down
            record.cost_usd = counts.cost_usd
        return record

    # ------------------------------------------------------------------ schedules
    # The schedules of this service's catalog (docs/schedules.md), of every repository:
    # `lamina controller --local` runs them; here they are listed and steered.

    def _schedules(self) -> Schedules:
        from .schedules import Schedules  # croniter and the catalog's tables: only here

        return Schedules(self._recorder.catalog_url)

    def list_schedules(self) -> list[ScheduleInfo]:
        return self._schedules().list()

    def get_schedule(self, name: str) -> ScheduleInfo:
        return self._schedules().get(name)

    def pause_schedule(self, name: str) -> ScheduleInfo:
        return self._schedules().pause(name)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        """Active again from its next slot after now (the paused-over slots are skipped)."""
        return self._schedules().resume(name)

    def run_schedule_now(self, name: str) -> ScheduleInfo:
        """Due now: a running controller starts it at its next pass, also when paused."""
        return self._schedules().run_now(name)

    def remove_schedule(self, name: str) -> None:
        self._schedules().remove(name)

    def last_good_backups(self, volumes: Sequence[str]) -> list[LastGoodBackup]:
        """For each volume (``cluster/namespace/name``): the end of its newest successful
        backup into this repository, from the catalog in one query, and how old it may get
        by its active schedules (the most frequent one), else 24 hours."""
        from .schedules import BACKUP, allowed_age

        wanted = list(dict.fromkeys(volumes))
        if len(wanted) > MAX_VOLUMES_ASKED:
            raise UsageError(f"at most {MAX_VOLUMES_ASKED} volumes at once")
        if not wanted:
            return []
        forms = _repository_forms(self.repo_url)
        opened = open_catalog(self._recorder.catalog_url)
        try:
            ended = opened.last_successes(forms, wanted)
        finally:
            opened.close()
        limits: dict[str, ScheduleInfo] = {}
        ages: dict[str, float] = {}
        for s in self.list_schedules():
            if s.kind != BACKUP or s.paused or not s.volume:
                continue
            if not set(_repository_forms(s.repository)) & set(forms):
                continue
            key = f"{LOCAL}/{s.volume}"
            age = allowed_age(s)
            if key not in limits or age < ages[key]:
                limits[key], ages[key] = s, age
        found = []
        for volume in wanted:
            schedule = limits.get(volume)
            if schedule is None:
                found.append(LastGoodBackup(volume, ended.get(volume)))
                continue
            found.append(
                LastGoodBackup(
                    volume,
                    ended.get(volume),
                    ages[volume],
                    schedule.name,
                    scheduled_since=schedule.created_at,
                )
            )
        return found

    def job(self, job_id: str) -> Job:
        with self._jobs_lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise UsageError(f"no job {shown(job_id)}") from None

    def job_views(self) -> list[JobView]:
        return [view_of(j) for j in self.jobs()]

    def job_view(self, job_id: str) -> JobView:
        return view_of(self.job(job_id))

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        """Call ``listener`` (from any thread) with the job now, then on every change of it;
        returns a function that stops watching."""
        job = self.job(job_id)
        unwatch = job.subscribe(lambda j: listener(view_of(j)))
        listener(view_of(job))  # the state it is in now, in case it changed before
        return unwatch

    def cancel_job(self, job_id: str) -> None:
        self.job(job_id).cancel()

    @property
    def backup_caps(self) -> BackupCaps:
        return self._runner.caps

    def set_backup_caps(self, caps: BackupCaps) -> None:
        """At most ``caps.max_backups`` backups run at once, ``caps.max_backups_per_volume``
        of one volume; the rest wait, queued, for every front end of this service."""
        self._runner.set_caps(caps)

    def _start(
        self,
        kind: str,
        description: str,
        fn: Callable[[Job], Any],
        *,
        volume: VolumeRef | None = None,
        point: str = "",
    ) -> Job:
        """Run ``fn`` as a job; a backup (``volume`` given) waits, queued, while the caps
        are reached. ``point``: the point the job is about."""
        job = Job(kind=kind, description=description, volume=volume, point=point)
        with self._jobs_lock:
            self._jobs[job.id] = job
        self._recorder.track(job)
        return self._runner.start(job, self.accounting.metered(job, fn))

    def start_backup(
        self,
        source: str,
        volume: str | VolumeRef,
        *,
        parent: str = "auto",
        changed_ranges: Iterable[Range] | Callable[[], Iterable[Range]] | None = None,
        changed_ranges_origin: str = "",
        allocated_ranges: Callable[[], Iterable[Range]] | None = None,
        allocated_ranges_origin: str = "",
        capacity: int | None = None,
        snapshot_handle: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Job:
        ref, parent, labels = check_backup_options(
            volume, parent=parent, snapshot_handle=snapshot_handle, labels=labels
        )
        changed: Callable[[], Iterable[Range]] | None
        if changed_ranges is None or callable(changed_ranges):
            changed = changed_ranges
        else:
            changed = FixedRanges(changed_ranges)
        request = BackupRequest(
            source=source,
            volume=ref,
            parent=parent,
            changed_ranges=changed,
            changed_ranges_origin=changed_ranges_origin,
            allocated_ranges=allocated_ranges,
            allocated_ranges_origin=allocated_ranges_origin,
            capacity=capacity,
            snapshot_handle=snapshot_handle,
            labels=labels or {},
        )
        return self._start_backup(request)

    def _start_backup(self, request: BackupRequest) -> Job:
        """Run a checked backup here (``RemoteService`` sends it to its server instead)."""
        ref = request.volume

        def run(job: Job) -> PointInfo:
            with self._lock(job, locks.SHARED, f"backup of {ref}") as held:
                point = engine.backup(
                    self.repo,
                    request,
                    progress=job._on_progress,
                    cancelled=lambda: job.cancel_requested,
                    before_commit=held.check,
                )
            return PointInfo.of(point)

        return self._start("backup", f"back up {request.source} as {ref}", run, volume=ref)

    def check_restore_target(
        self, target: str, *, overwrite: bool = False, within: Sequence[str] = ()
    ) -> bool:
        """Refuse a restore target that cannot be written, before anything is (TargetError;
        TargetExists when only ``overwrite`` is missing). Returns whether it is a device."""
        return check_image_target(target, overwrite=overwrite, within=within)

    def start_restore(
        self,
        point_ref: str,
        target: str,
        *,
        overwrite: bool = False,
        within: Sequence[str] = (),
        delta: bool = False,
        assume_from: str | None = None,
    ) -> Job:
        """Restore a point to an image file or block device.

        The target is checked now (a bad one raises before any job exists) and opened again
        when the restore starts writing; ``within`` limits it to those folders, walked
        without following symlinks then. ``delta``: the target holds some version of the
        volume and only the blocks that differ are written (``assume_from``: the point it
        holds, so it is not read); the result is then the delta report (docs/copy.md).
        """
        if assume_from and not delta:
            raise UsageError("--assume-from needs --delta")
        if delta:
            if overwrite:
                raise UsageError(
                    "--delta writes onto an existing target; --overwrite is not needed"
                )
            from .copies import start_delta_restore

            return start_delta_restore(self, point_ref, target, assume_from=assume_from)
        checked_point_ref(point_ref)
        self.check_restore_target(target, overwrite=overwrite, within=within)

        def run(job: Job) -> RestoreReport:
            with self._lock(job, locks.SHARED, f"restore of {point_ref}", optional=True):
                point = self.find_point(point_ref)
                return engine.restore(
                    self.repo,
                    point,
                    target,
                    overwrite=overwrite,
                    within=within,
                    progress=job._on_progress,
                    cancelled=lambda: job.cancel_requested,
                )

        return self._start("restore", f"restore {point_ref} to {target}", run, point=point_ref)

    # ------------------------------------------------------------------ other repositories

    def open_other(self, url: str, password: bytes | None = None) -> Service:
        """Another repository, opened now (a wrong password or format fails here), for a
        copy or a comparison; its jobs are this service's, so it records nothing itself."""
        other = Service(url, password=password, lock_wait=self.lock_wait, catalog="none")
        try:
            other.repo  # noqa: B018 - opening is the check
        except BaseException:
            other.close()
            raise
        return other

    def start_copy(
        self,
        other: str,
        *,
        direction: str = "to",
        points: Sequence[str] = (),
        volume: str | None = None,
        verify: bool = False,
        other_password: bytes | None = None,
    ) -> Job:
        """Copy points with their chains between this repository and ``other``:
        ``direction`` "to" copies from this one to ``other``, "from" the other way. A job
        of this service (history, request accounting); see copies.start_copy."""
        from .copies import start_copy

        if direction not in ("to", "from"):
            raise UsageError(f"the direction of a copy is 'to' or 'from', not {shown(direction)}")
        peer = self.open_other(other, other_password)
        try:
            source, destination = (self, peer) if direction == "to" else (peer, self)
            job = start_copy(source, destination, points, volume=volume, verify=verify, owner=self)
        except BaseException:
            peer.close()
            raise
        closed = threading.Event()

        def close_when_done(j: Job) -> None:
            if j.done and not closed.is_set():
                closed.set()
                peer.close()

        job.subscribe(close_when_done)
        close_when_done(job)  # it may have ended before the subscription
        return job

    def compare(
        self, other: str, *, volume: str | None = None, other_password: bytes | None = None
    ) -> CompareReport:
        """This repository (left) and ``other`` (right), volume by volume."""
        from .copies import compare

        peer = self.open_other(other, other_password)
        try:
            return compare(self, peer, volume=volume)
        finally:
            peer.close()

    def start_verify(self, point_ref: str | None = None, *, deep: bool = False) -> Job:
        if point_ref:
            checked_point_ref(point_ref)

        def run(job: Job) -> VerifyReport:
            with self._lock(job, locks.SHARED, "verify", optional=True):
                # Listed under the lock: a concurrent forget cannot make false problems.
                if point_ref:
                    points = [self.find_point(point_ref)]
                    job.point = points[0].id
                    self._verify_states.follow(job.point, job)
                else:
                    points = self.repo.list_points()
                return engine.verify(
                    self.repo,
                    points,
                    deep=deep,
                    progress=job._on_progress,
                    cancelled=lambda: job.cancel_requested,
                )

        what = f"point {point_ref}" if point_ref else "every point"
        return self._start(
            "verify", f"verify {what}{' (deep)' if deep else ''}", run, point=point_ref or ""
        )

    # ------------------------------------------------------------------ files inside points
    # (the FUSE mount, `lamina files`, the TUI file browser)

    _files_lock = threading.Lock()
    _FILES_KEPT = 4  # points whose filesystem stays open for list_files

    def open_view(
        self,
        point_ref: str | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE,
        readahead_bytes: int = DEFAULT_READAHEAD,
    ) -> RepositoryView:
        """The repository (or one point) as a read-only tree of paths (see backend/fsview.py)."""
        from ..engine.fsview import RepositoryView

        return RepositoryView(
            self, point=point_ref, cache_bytes=cache_bytes, readahead_bytes=readahead_bytes
        )

    def point_files(self, point_ref: str, *, cache_bytes: int = 64 * 1024 * 1024) -> PointFiles:
        """The filesystem inside a point's volume; the last few stay open for browsing."""
        from ..engine.fsview import PointFiles

        point = self.get_point(point_ref)
        with self._files_lock:
            kept: dict[str, PointFiles] = self.__dict__.setdefault("_files_kept", {})
            used: dict[str, float] = self.__dict__.setdefault("_files_used", {})
            files = kept.pop(point.id, None)
            if files is None:
                files = PointFiles(self, point, cache_bytes=cache_bytes)
            kept[point.id] = files
            used[point.id] = time.monotonic()
            while len(kept) > self._FILES_KEPT:
                old_id = next(iter(kept))
                kept.pop(old_id).close()  # a caller still holding it reopens on next use
                used.pop(old_id, None)
            self._start_view_janitor()
            return files

    _VIEW_IDLE = 60.0  # an open view holds a shared lock: give it back when unused

    def _start_view_janitor(self) -> None:
        if self.__dict__.get("_janitor") is not None:
            return

        def sweep() -> None:
            while True:
                time.sleep(self._VIEW_IDLE / 2)
                self.close_idle_views(self._VIEW_IDLE)

        self._janitor = threading.Thread(target=sweep, name="lamina-view-janitor", daemon=True)
        self._janitor.start()

    def close_idle_views(self, idle: float = 0.0) -> int:
        """Close browsing views unused for ``idle`` seconds (all with 0), releasing their locks."""
        with self._files_lock:
            kept: dict[str, PointFiles] = self.__dict__.setdefault("_files_kept", {})
            used: dict[str, float] = self.__dict__.setdefault("_files_used", {})
            now = time.monotonic()
            stale = [pid for pid in kept if now - used.get(pid, 0.0) >= idle]
            for pid in stale:
                kept.pop(pid).close()
                used.pop(pid, None)
            return len(stale)

    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]:
        """The entries of a directory in a point's filesystem (sorted), or [the entry] of a file.

        Raises FilesUnavailable when the volume holds no readable filesystem, FileNotFound
        (lamina.backend.fsread.errors) when the path is not there.
        """
        from .files import FileEntry  # the filesystem parsers: only for browsing

        files = self.point_files(point_ref)
        entry = files.lookup(path)
        if entry.kind == "dir":
            folder = "/" + path.strip("/")
            return [FileEntry.of(e, folder) for e in files.listdir(path)]
        return [FileEntry.of(entry, "/" + path.strip("/").rpartition("/")[0])]

    def read_file(self, point_ref: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a regular file inside a point from ``offset`` (``length`` 0: to its end)."""
        if offset < 0 or length < 0:
            raise UsageError("offset and length must not be negative")
        files = self.point_files(point_ref)
        entry = files.lookup(path)
        if entry.kind != "file":
            raise UsageError(f"{shown(path)} is a {entry.kind}, not a regular file")
        return bytes(files.read(entry, offset, length or entry.size))

    def start_extract(
        self, point_ref: str, paths: Sequence[str], to_dir: str, *, within: Sequence[str] = ()
    ) -> Job:
        """Copy files and directories out of a point's filesystem into ``to_dir``.

        The target folder is checked now and opened when the job starts writing (``within``:
        as for start_restore). The job's result is an ExtractReport (backend/extract.py);
        progress counts bytes.
        """
        from ..engine.extract import extract
        from ..engine.fsview import PointFiles

        checked_point_ref(point_ref)
        wanted = list(paths)
        if not wanted:
            raise UsageError("name at least one path to extract")
        check_folder_target(to_dir, within=within)

        def run(job: Job) -> ExtractReport:
            files = PointFiles(self, self.get_point(point_ref))
            try:
                files.filesystem()
                return extract(
                    files,
                    wanted,
                    to_dir,
                    within=within,
                    progress=job._on_progress,
                    cancelled=lambda: job.cancel_requested,
                )
            finally:
                files.close()

        return self._start(
            "extract",
            f"extract {plural(len(wanted), 'path')} of {point_ref} to {to_dir}",
            run,
            point=point_ref,
        )


def list_local_snapshots(root: str) -> list[LocalSnapshotInfo]:
    """The snapshots of a local cluster, without a repository to say which are needed."""
    return [LocalSnapshotInfo.of(s, None) for s in LocalCluster(root).list_snapshots()]


def ranges_from_json_file(path: str) -> list[Range]:
    """A changed-ranges file: a JSON list of {"byte_offset": N, "size_bytes": N}."""
    try:
        with open(path, "rb") as f:
            items = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read changed ranges file {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"changed ranges file {path} is not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise UsageError(f"changed ranges file {path} must hold a JSON list")
    return list(engine.iter_ranges_json(items, f"changed ranges file {path}"))


def _chain_length(point: PointInfo, by_id: dict[str, PointInfo]) -> int:
    length, current, seen = 0, point, set()
    while current.id not in seen:
        seen.add(current.id)
        length += 1
        parent = by_id.get(current.parent) if current.parent else None
        if parent is None:
            break
        current = parent
    return length


def volume_summaries(points: Sequence[PointInfo]) -> list[VolumeInfo]:
    """Every volume of ``points`` (oldest first) summarised, ordered by volume: what the
    catalog's point list answers in one query, computed from the points themselves."""
    by_id = {p.id: p for p in points}
    by_volume: dict[VolumeRef, list[PointInfo]] = {}
    for p in points:
        by_volume.setdefault(p.volume, []).append(p)
    out = []
    for ref, mine in sorted(by_volume.items(), key=lambda kv: str(kv[0])):
        newest = max(mine, key=lambda p: (p.created, p.id))
        out.append(
            VolumeInfo(
                volume=ref,
                points=len(mine),
                last_point=newest,
                capacity=newest.capacity,
                stored_bytes=sum(p.bytes_uploaded for p in mine),
                chain_length=_chain_length(newest, by_id),
            )
        )
    return out


def volumes_with_backups(
    cluster: str,
    namespace: str | None,
    listed: Sequence[ClusterVolume],
    volumes: Sequence[VolumeInfo],
) -> list[ClusterVolume]:
    """A cluster's volumes with what the repository holds of each (``volumes``, the
    summaries of ``list_volumes``), then the volumes of that cluster that only have backups
    left (``RemoteService`` fills them the same way)."""
    by_volume = {
        (v.volume.namespace, v.volume.name): v for v in volumes if v.volume.cluster == cluster
    }

    def backed_up(volume: ClusterVolume) -> ClusterVolume:
        summary = by_volume.get((volume.namespace, volume.name))
        if summary is None:
            return volume
        return replace(
            volume,
            last_backup=summary.last_point.created,
            last_point=summary.last_point.id,
            chain_length=summary.chain_length,
            points=summary.points,
            stored=summary.stored_bytes,
        )

    out = [backed_up(v) for v in listed]
    seen = {(v.namespace, v.name) for v in listed}
    for ns, name in sorted(by_volume):
        if (ns, name) in seen or (namespace and ns != namespace):
            continue
        newest = by_volume[(ns, name)].last_point
        gone = ClusterVolume(
            cluster=cluster,
            namespace=ns,
            name=name,
            mode="",
            capacity=newest.capacity,
            storage_class="",
            driver="",
            cbt=False,
            phase="backups only",
            in_cluster=False,
        )
        out.append(backed_up(gone))
    return out
