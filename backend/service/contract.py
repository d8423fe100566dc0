"""The service contract: what every front end may ask of lamina, in process or over the API.

``Service`` (service.py, the repository in this process) and ``RemoteService``
(remote.py, a lamina server over gRPC) both satisfy ``LaminaService``; the TUI
takes either, the CLI's ``--server`` option swaps one for the other. mypy checks both
against it (tests/unit/test_service_contract.py). Everything comes back as the
models of models.py; long operations come back as ``Job``s, shown as ``JobView``s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..engine.extents import Range
from ..engine.lifecycle import Policy
from .jobs import Job
from .models import (
    Capabilities,
    ClusterSummary,
    ClusterVolume,
    CompareReport,
    HistoryPage,
    JobRecord,
    JobView,
    LastGoodBackup,
    LockInfo,
    MountInfo,
    PointInfo,
    Reachability,
    RepositoryInfo,
    VolumeInfo,
    VolumeRef,
)

if TYPE_CHECKING:
    # Annotations only: file entries load the filesystem parsers, schedules croniter.
    from .accounting import RequestCounts
    from .files import FileEntry
    from .schedules import ScheduleInfo


class LaminaService(Protocol):
    """One repository and its clusters. Every call may block; failures are LaminaErrors
    with one plain line. Point references are ids or unique prefixes (``point_ref``)."""

    repo_url: str

    # ------------------------------------------------------------------ repository
    def info(self) -> RepositoryInfo: ...

    def capabilities(self) -> Capabilities: ...

    def close(self) -> None: ...

    # ------------------------------------------------------------------ points
    def list_points(self, volume: str | VolumeRef | None = None) -> list[PointInfo]: ...

    def get_point(self, point_ref: str) -> PointInfo: ...

    def chain(self, point_ref: str) -> list[PointInfo]: ...

    def list_volumes(self) -> list[VolumeInfo]: ...

    def protect(self, point_ref: str, note: str = "") -> PointInfo: ...

    def unprotect(self, point_ref: str) -> PointInfo: ...

    # ------------------------------------------------------------------ clusters
    def list_clusters(self) -> list[ClusterSummary]: ...

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]: ...

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None, *, with_backups: bool = False
    ) -> list[ClusterVolume]: ...

    # ------------------------------------------------------------------ files
    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]: ...

    def read_file(
        self, point_ref: str, path: str, *, offset: int = 0, length: int = 0
    ) -> bytes: ...

    # ------------------------------------------------------------------ jobs
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
    ) -> Job: ...

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> Job: ...

    def start_restore(
        self,
        point_ref: str,
        target: str,
        *,
        overwrite: bool = False,
        within: Sequence[str] = (),
        delta: bool = False,
        assume_from: str | None = None,
    ) -> Job: ...

    def start_verify(self, point_ref: str | None = None, *, deep: bool = False) -> Job: ...

    def start_extract(
        self, point_ref: str, paths: Sequence[str], to_dir: str, *, within: Sequence[str] = ()
    ) -> Job: ...

    def start_delete(self, point_ref: str) -> Job: ...

    def start_forget(
        self, policy: Policy, *, volume: str | None = None, dry_run: bool = False
    ) -> Job: ...

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> Job: ...

    def start_consolidate(self, point_ref: str, until: str | None = None) -> Job: ...

    # ------------------------------------------------------------------ other repositories
    # ``other`` is a repository URL as the service's machine reaches it (docs/copy.md).

    def start_copy(
        self,
        other: str,
        *,
        direction: str = "to",
        points: Sequence[str] = (),
        volume: str | None = None,
        verify: bool = False,
        other_password: bytes | None = None,
    ) -> Job: ...

    def compare(
        self, other: str, *, volume: str | None = None, other_password: bytes | None = None
    ) -> CompareReport: ...

    def job_views(self) -> list[JobView]: ...

    # ------------------------------------------------------------------ job history

    def list_history(
        self,
        *,
        volume: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        failed: bool = False,
        limit: int | None = None,
        page_token: str = "",
    ) -> HistoryPage: ...

    def get_job(self, job_id: str) -> JobRecord: ...

    def job_requests(self, job_id: str) -> RequestCounts | None: ...

    def job_view(self, job_id: str) -> JobView: ...

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]: ...

    def cancel_job(self, job_id: str) -> None: ...

    # ------------------------------------------------------------------ schedules
    # The schedules of the service's catalog, by name (docs/schedules.md).

    def list_schedules(self) -> list[ScheduleInfo]: ...

    def get_schedule(self, name: str) -> ScheduleInfo: ...

    def pause_schedule(self, name: str) -> ScheduleInfo: ...

    def resume_schedule(self, name: str) -> ScheduleInfo: ...

    def run_schedule_now(self, name: str) -> ScheduleInfo: ...

    def remove_schedule(self, name: str) -> None: ...

    def last_good_backups(self, volumes: Sequence[str]) -> list[LastGoodBackup]: ...

    # ------------------------------------------------------------------ locks, mounts
    def list_locks(self) -> list[LockInfo]: ...

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]: ...

    def mount(
        self, point_ref: str | None, mountpoint: str, *, cache_bytes: int = 512 * 1024 * 1024
    ) -> MountInfo: ...

    def unmount(self, mountpoint: str) -> None: ...

    def list_mounts(self) -> list[MountInfo]: ...
