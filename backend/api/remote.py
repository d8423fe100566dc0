"""A Service whose work happens on a lamina server: what the CLI's --server option uses.

``RemoteService`` answers the service layer's queries and starts its jobs through the API,
so a command written against ``Service`` runs unchanged against a server. Jobs are
``RemoteJob``s that follow the server's tasks. Anything that needs the repository itself in
this process fails with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

from ..errors import UsageError
from ..service import (
    ClusterSummary,
    ClusterVolume,
    Entry,
    Job,
    LockInfo,
    MountInfo,
    PointInfo,
    Policy,
    Range,
    Reachability,
    RepositoryInfo,
    Service,
    VolumeInfo,
    VolumeRef,
)
from .client import ApiClient, TaskInfo


def _plain(
    ranges: Iterable[Range] | Callable[[], Iterable[Range]] | None, what: str
) -> list[Range] | None:
    if ranges is None:
        return None
    if callable(ranges):  # a live range source (CBT) of this machine means nothing there
        raise UsageError(f"{what} from a range source of this machine cannot go to a server")
    return list(ranges)


class RemoteService(Service):
    def __init__(self, client: ApiClient) -> None:
        super().__init__(f"lamina server {client.address}")
        self.client = client

    @property
    def repo(self) -> NoReturn:
        raise UsageError(
            f"this operation needs the repository itself; it cannot run through the server "
            f"at {self.client.address}"
        )

    def close(self) -> None:
        self.client.close()

    def _follow(self, task: TaskInfo) -> Job:
        job = self.client.job(task)
        with self._jobs_lock:
            self._jobs[job.id] = job
        return job

    # ------------------------------------------------------------------ queries

    def info(self) -> RepositoryInfo:
        return self.client.info()

    def list_points(self, volume: str | VolumeRef | None = None) -> list[PointInfo]:
        return self.client.list_points(volume, include_manifest=True)

    def get_point(self, ref: str) -> PointInfo:
        return self.client.get_point(ref)

    def chain(self, ref: str) -> list[PointInfo]:
        return self.client.chain(ref, include_manifest=True)

    def list_volumes(self) -> list[VolumeInfo]:
        return self.client.list_volumes()

    def list_clusters(self) -> list[ClusterSummary]:
        return self.client.list_clusters()

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        return self.client.check_clusters(names, timeout=timeout)

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None
    ) -> list[ClusterVolume]:
        return self.client.list_cluster_volumes(cluster, namespace)

    def list_files(self, point_ref: str, path: str = "/") -> list[Entry]:
        return self.client.list_files(point_ref, path)

    def protect(self, point_ref: str, note: str = "") -> PointInfo:
        return self.client.set_protection(point_ref, True, note=note)

    def unprotect(self, point_ref: str) -> PointInfo:
        return self.client.set_protection(point_ref, False)

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
    ) -> Job:
        task = self.client.start_backup(
            source,
            volume,
            parent=parent,
            changed_ranges=_plain(changed_ranges, "changed ranges"),
            changed_ranges_origin=changed_ranges_origin,
            allocated_ranges=_plain(allocated_ranges, "allocated ranges"),
            allocated_ranges_origin=allocated_ranges_origin,
            capacity=capacity,
            snapshot_handle=snapshot_handle,
            labels=labels,
        )
        return self._follow(task)

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> Job:
        return self._follow(self.client.start_volume_backup(cluster, namespace, name))

    def check_restore_target(
        self, target: str, *, overwrite: bool = False, within: Sequence[str] = ()
    ) -> bool:
        """The target is the server's: it checks it when StartRestore arrives."""
        return False

    def start_restore(
        self,
        point_ref: str,
        target: str,
        *,
        overwrite: bool = False,
        within: Sequence[str] = (),  # the server's own --allow-path applies instead
    ) -> Job:
        return self._follow(self.client.start_restore(point_ref, target, overwrite=overwrite))

    def start_verify(self, point_ref: str | None = None, *, deep: bool = False) -> Job:
        return self._follow(self.client.start_verify(point_ref, deep=deep))

    def start_extract(
        self,
        point_ref: str,
        paths: Sequence[str],
        to_dir: str,
        *,
        within: Sequence[str] = (),  # the server's own --allow-path applies instead
    ) -> Job:
        return self._follow(self.client.start_extract(point_ref, paths, to_dir))

    def start_delete(self, point_ref: str) -> Job:
        return self._follow(self.client.start_delete(point_ref))

    def start_forget(
        self, policy: Policy, *, volume: str | None = None, dry_run: bool = False
    ) -> Job:
        return self._follow(self.client.start_forget(policy, volume=volume, dry_run=dry_run))

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> Job:
        return self._follow(self.client.start_prune(dry_run=dry_run, repack_below=repack_below))

    def start_consolidate(self, point_ref: str, until: str | None = None) -> Job:
        return self._follow(self.client.start_consolidate(point_ref, until))

    def list_locks(self) -> list[LockInfo]:
        return self.client.list_locks()

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]:
        return self.client.unlock(all_locks=all_locks)

    # ------------------------------------------------------------------ mounts (the server's)

    def mount(
        self, point_ref: str | None, mountpoint: str, *, cache_bytes: int = 512 * 1024 * 1024
    ) -> MountInfo:
        return self.client.mount(point_ref, mountpoint, cache_bytes=cache_bytes)

    def unmount(self, mountpoint: str) -> None:
        self.client.unmount(mountpoint)

    def list_mounts(self) -> list[MountInfo]:
        return self.client.list_mounts()
