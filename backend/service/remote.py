"""The service contract over the lamina.v1 API: ``RemoteService``, and ``ApiClient`` under it.

``RemoteService`` keeps the service contract (contract.py) through a lamina server: it
answers the queries and starts the jobs through the API, so a command or a screen written
against ``Service`` runs unchanged against a server (the CLI's ``--server``, ``lamina tui
--server``). Its jobs are ``RemoteJob``s that follow the server's tasks. Anything that
needs the repository itself in this process fails with one clear line.

``ApiClient`` is the typed client one level down, one method per RPC:

    with ApiClient("127.0.0.1:7443", token=token) as client:
        task = client.start_backup("/dev/vg/db", "prod/db")
        final = client.wait(task.id, on_update=lambda t: print(t.state))

Everything comes back as the models of models.py (tasks as ``JobView``s), converted by
wire.py. Calls raise LaminaError subclasses with one line (ApiError carries the status code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc

from ..display import printable
from ..engine.extents import Range
from ..engine.lifecycle import Policy
from ..engine.pipelines import BackupRequest
from ..errors import Cancelled, LaminaError, UsageError
from ..progress import Progress
from . import wire
from .accounting import RequestCounts
from .jobs import Job
from .models import (
    Capabilities,
    ClusterSummary,
    ClusterVolume,
    CompareReport,
    ExtractReport,
    FileEntry,
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
from .rpc_errors import error_from_rpc
from .schedules import ScheduleInfo
from .service import FixedRanges, Service, volumes_with_backups
from .tree_writer import TreeWriter


def read_token_file(path: str) -> str:
    """The token in ``path``: one line, surrounding whitespace dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"token file {path} is not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise UsageError(f"token file {path} is empty")
    if any(c.isspace() for c in token) or printable(token) != token:  # visible, one word
        raise UsageError(f"token file {path} must hold one token without spaces")
    return token


DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServerInfo:
    version: str
    repository: RepositoryInfo
    capabilities: Capabilities
    max_backups: int
    max_backups_per_volume: int
    restricted_paths: bool


Resp = TypeVar("Resp")


def _byte_ranges(ranges: Iterable[Range], origin: str) -> pb.ByteRanges:
    message = pb.ByteRanges(origin=origin)
    for offset, length in ranges:
        message.ranges.add(offset=offset, length=length)
    return message


class ApiClient:
    """One channel to a lamina server; thread-safe, like the channel under it."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self.timeout = timeout
        if ca_file is not None:
            try:
                ca = Path(ca_file).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read CA file {ca_file}: {e.strerror}") from None
            self.channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=ca)
            )
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.LaminaServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    @classmethod
    def from_files(
        cls, address: str, *, token_file: str | None = None, ca_file: str | None = None
    ) -> ApiClient:
        token = read_token_file(token_file) if token_file else None
        return cls(address, token=token, ca_file=ca_file)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: Callable[..., Resp], request: Any) -> Resp:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.address) from None

    def _stream(self, method: Callable[..., Iterable[Resp]], request: Any) -> Iterator[Resp]:
        """A server stream without a deadline; failures as LaminaErrors; cancelled when
        the caller stops iterating."""
        call = method(request, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.address) from None
        finally:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()

    # ------------------------------------------------------------------ server, repository

    def server_info(self) -> ServerInfo:
        m = self._call(self.stub.GetServerInfo, pb.GetServerInfoRequest())
        return ServerInfo(
            version=m.version,
            repository=wire.repository_info(m.repository, server=self.address),
            capabilities=wire.capabilities(m.capabilities),
            max_backups=m.limits.max_backups,
            max_backups_per_volume=m.limits.max_backups_per_volume,
            restricted_paths=m.limits.restricted_paths,
        )

    def info(self) -> RepositoryInfo:
        return self.server_info().repository

    def list_clusters(self) -> list[ClusterSummary]:
        m = self._call(self.stub.ListClusters, pb.ListClustersRequest())
        return [wire.cluster_summary(c) for c in m.clusters]

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        wanted = list(names) if names is not None else None
        if wanted == []:
            return {}
        request = pb.CheckClustersRequest(names=wanted or [], timeout_seconds=timeout)
        m = self._call(self.stub.CheckClusters, request)
        return {c.name: wire.reachability(c) for c in m.checks}

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None
    ) -> list[ClusterVolume]:
        request = pb.ListClusterVolumesRequest(cluster=cluster, namespace=namespace or "")
        m = self._call(self.stub.ListClusterVolumes, request)
        return [wire.cluster_volume(v) for v in m.volumes]

    def list_volumes(self) -> list[VolumeInfo]:
        m = self._call(self.stub.ListVolumes, pb.ListVolumesRequest())
        return [wire.volume_info(v) for v in m.volumes]

    def list_points(
        self, volume: str | VolumeRef | None = None, *, include_manifest: bool = False
    ) -> list[PointInfo]:
        request = pb.ListPointsRequest(
            volume=str(volume) if volume is not None else "", include_manifest=include_manifest
        )
        return [wire.point_info(p) for p in self._call(self.stub.ListPoints, request).points]

    def get_point(self, point_ref: str) -> PointInfo:
        return wire.point_info(self._call(self.stub.GetPoint, pb.GetPointRequest(point=point_ref)))

    def chain(self, point_ref: str, *, include_manifest: bool = False) -> list[PointInfo]:
        request = pb.GetChainRequest(point=point_ref, include_manifest=include_manifest)
        return [wire.point_info(p) for p in self._call(self.stub.GetChain, request).points]

    def set_protection(self, point_ref: str, protected: bool, *, note: str = "") -> PointInfo:
        request = pb.SetProtectionRequest(point=point_ref, protected=protected, note=note)
        return wire.point_info(self._call(self.stub.SetProtection, request))

    # ------------------------------------------------------------------ tasks

    def start_backup(
        self,
        source: str,
        volume: str | VolumeRef,
        *,
        parent: str = "auto",
        changed_ranges: Iterable[Range] | None = None,
        changed_ranges_origin: str = "",
        allocated_ranges: Iterable[Range] | None = None,
        allocated_ranges_origin: str = "",
        capacity: int | None = None,
        snapshot_handle: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> JobView:
        """Back up ``source``, a path on the server's machine."""
        request = pb.StartBackupRequest(
            source=source, volume=str(volume), parent=parent, labels=labels or {}
        )
        if changed_ranges is not None:
            request.changed_ranges.CopyFrom(_byte_ranges(changed_ranges, changed_ranges_origin))
        if allocated_ranges is not None:
            request.allocated_ranges.CopyFrom(
                _byte_ranges(allocated_ranges, allocated_ranges_origin)
            )
        if capacity is not None:
            request.capacity = capacity
        if snapshot_handle is not None:
            request.snapshot_handle = snapshot_handle
        return wire.job_view(self._call(self.stub.StartBackup, request))

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> JobView:
        request = pb.StartVolumeBackupRequest(cluster=cluster, namespace=namespace, name=name)
        return wire.job_view(self._call(self.stub.StartVolumeBackup, request))

    def start_restore(
        self,
        point_ref: str,
        target: str,
        *,
        overwrite: bool = False,
        delta: bool = False,
        assume_from: str | None = None,
    ) -> JobView:
        """Restore to ``target``, a path on the server's machine."""
        request = pb.StartRestoreRequest(
            point=point_ref,
            target=target,
            overwrite=overwrite,
            delta=delta,
            assume_from=assume_from or "",
        )
        return wire.job_view(self._call(self.stub.StartRestore, request))

    def start_copy(
        self,
        other: str,
        *,
        direction: str = "to",
        points: Sequence[str] = (),
        volume: str | None = None,
        verify: bool = False,
        other_password: bytes | None = None,
    ) -> JobView:
        """Copy between the server's repository and ``other`` (as the server reaches it)."""
        request = pb.StartCopyRequest(
            other=pb.OtherRepository(url=other, password=other_password or b""),
            direction=direction,
            points=list(points),
            volume=volume or "",
            verify=verify,
        )
        return wire.job_view(self._call(self.stub.StartCopy, request))

    def compare(
        self, other: str, *, volume: str | None = None, other_password: bytes | None = None
    ) -> CompareReport:
        request = pb.CompareRequest(
            other=pb.OtherRepository(url=other, password=other_password or b""),
            volume=volume or "",
        )
        return wire.compare_report(self._call(self.stub.Compare, request))

    def start_verify(self, point_ref: str | None = None, *, deep: bool = False) -> JobView:
        request = pb.StartVerifyRequest(point=point_ref or "", deep=deep)
        return wire.job_view(self._call(self.stub.StartVerify, request))

    def start_extract(self, point_ref: str, paths: Sequence[str], target: str) -> JobView:
        """Extract into ``target``, a folder on the server's machine."""
        request = pb.StartExtractRequest(
            point=point_ref, paths=[wire.file_path_message(p) for p in paths], target=target
        )
        return wire.job_view(self._call(self.stub.StartExtract, request))

    def start_delete(self, point_ref: str) -> JobView:
        return wire.job_view(
            self._call(self.stub.StartDelete, pb.StartDeleteRequest(point=point_ref))
        )

    def start_forget(
        self, policy: Policy, *, volume: str | None = None, dry_run: bool = False
    ) -> JobView:
        request = wire.forget_request(policy, volume=volume, dry_run=dry_run)
        return wire.job_view(self._call(self.stub.StartForget, request))

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> JobView:
        request = pb.StartPruneRequest(dry_run=dry_run, repack_below=repack_below)
        return wire.job_view(self._call(self.stub.StartPrune, request))

    def start_consolidate(self, point_ref: str, until: str | None = None) -> JobView:
        request = pb.StartConsolidateRequest(point=point_ref, until=until or "")
        return wire.job_view(self._call(self.stub.StartConsolidate, request))

    def list_locks(self) -> list[LockInfo]:
        response = self._call(self.stub.ListLocks, pb.ListLocksRequest())
        return [wire.lock_info(m) for m in response.locks]

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]:
        response = self._call(self.stub.Unlock, pb.UnlockRequest(all=all_locks))
        return [wire.lock_info(m) for m in response.removed]

    # ------------------------------------------------------------------ mounts

    def mount(self, point_ref: str | None, mountpoint: str, *, cache_bytes: int = 0) -> MountInfo:
        """Mount on the server's machine; ``mountpoint`` is a folder there."""
        request = pb.MountRequest(
            point=point_ref or "", mountpoint=mountpoint, cache_bytes=cache_bytes
        )
        return wire.mount_info(self._call(self.stub.Mount, request))

    def unmount(self, mountpoint: str) -> None:
        self._call(self.stub.Unmount, pb.UnmountRequest(mountpoint=mountpoint))

    def list_mounts(self) -> list[MountInfo]:
        response = self._call(self.stub.ListMounts, pb.ListMountsRequest())
        return [wire.mount_info(m) for m in response.mounts]

    def tasks(self) -> list[JobView]:
        return [
            wire.job_view(t) for t in self._call(self.stub.ListTasks, pb.ListTasksRequest()).tasks
        ]

    def task(self, task_id: str, *, include_log: bool = False) -> JobView:
        request = pb.GetTaskRequest(id=task_id, include_log=include_log)
        return wire.job_view(self._call(self.stub.GetTask, request))

    def cancel(self, task_id: str) -> JobView:
        return wire.job_view(self._call(self.stub.CancelTask, pb.CancelTaskRequest(id=task_id)))

    def watch(self, task_id: str, *, include_log: bool = False) -> Iterator[JobView]:
        """The task now, then at every change, ending with its finished state."""
        request = pb.WatchTaskRequest(id=task_id, include_log=include_log)
        for message in self._stream(self.stub.WatchTask, request):
            yield wire.job_view(message)

    def wait(self, task_id: str, *, on_update: Callable[[JobView], None] | None = None) -> JobView:
        """Watch a task to its end; returns its final state (whatever that is)."""
        last: JobView | None = None
        for info in self.watch(task_id):
            last = info
            if on_update is not None:
                on_update(info)
        if last is None or not last.finished:
            raise LaminaError(f"the server stopped reporting task {task_id} before it ended")
        return last

    def list_history(
        self,
        *,
        volume: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        failed: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> HistoryPage:
        request = pb.ListHistoryRequest(
            volume=volume or "",
            kind=kind or "",
            since=wire.timestamp(since) if since is not None else None,
            failed=failed,
            page_size=page_size,
            page_token=page_token,
        )
        return wire.history_page(self._call(self.stub.ListHistory, request))

    def get_job(self, job_id: str) -> JobRecord:
        return wire.history_job(self._call(self.stub.GetJob, pb.GetJobRequest(id=job_id)))

    def list_schedules(self) -> list[ScheduleInfo]:
        m = self._call(self.stub.ListSchedules, pb.ListSchedulesRequest())
        return [wire.schedule_info(s) for s in m.schedules]

    def schedule(self, rpc: str, name: str) -> ScheduleInfo:
        """GetSchedule, PauseSchedule, ResumeSchedule or RunScheduleNow of one schedule."""
        method = getattr(self.stub, rpc)
        return wire.schedule_info(self._call(method, pb.ScheduleRequest(name=name)))

    def remove_schedule(self, name: str) -> None:
        self._call(self.stub.RemoveSchedule, pb.ScheduleRequest(name=name))

    def last_good_backups(self, volumes: Sequence[str]) -> list[LastGoodBackup]:
        request = pb.ListLastGoodBackupsRequest(volumes=list(volumes))
        m = self._call(self.stub.ListLastGoodBackups, request)
        return [wire.last_good(b) for b in m.backups]

    def job(self, task: JobView) -> RemoteJob:
        """A service-layer Job that mirrors a remote task (progress, result, cancel)."""
        return RemoteJob.follow(self, task)

    # ------------------------------------------------------------------ files

    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]:
        request = pb.ListFilesRequest(point=point_ref, path=wire.file_path_message(path))
        folder = "/" + path.strip("/")
        entries = self._call(self.stub.ListFiles, request).entries
        return [wire.file_entry(e, folder) for e in entries]

    def read_file(self, point_ref: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a file from ``offset`` (``length`` 0: to its end), held in memory."""
        out = bytearray()
        for chunk in self.file_chunks(point_ref, path, offset=offset, length=length):
            out += chunk.data if chunk.data else bytes(chunk.zero_length)
        return bytes(out)

    def file_chunks(
        self, point_ref: str, path: str, *, offset: int = 0, length: int = 0
    ) -> Iterator[pb.Chunk]:
        request = pb.ReadFileRequest(
            point=point_ref, path=wire.file_path_message(path), offset=offset, length=length
        )
        for message in self._stream(self.stub.ReadFile, request):
            if message.WhichOneof("item") == "chunk":
                yield message.chunk

    def download(self, point_ref: str, path: str, target_dir: str) -> ExtractReport:
        """Copy a file or folder of a point into ``target_dir`` on this machine, safely."""
        request = pb.ReadTreeRequest(point=point_ref, path=wire.file_path_message(path))
        writer = TreeWriter(target_dir)
        try:
            for item in self._stream(self.stub.ReadTree, request):
                writer.feed(item)
        except BaseException:
            writer.abort()
            raise
        return writer.close()


class RemoteJob(Job):
    """A Job whose work runs on a server: it follows the task and mirrors its progress.

    ``cancel()`` asks the server to cancel the task. The result is what the service's own
    job would return (PointInfo, RestoreReport, VerifyReport, ExtractReport, ...).
    """

    client: ApiClient
    task: JobView

    @classmethod
    def follow(cls, client: ApiClient, task: JobView) -> RemoteJob:
        job = cls(kind=task.kind, description=task.description, id=task.id)
        job.client = client
        job.task = task
        job.created = task.created
        job.volume, job.point = task.volume, task.point or ""
        threading.Thread(
            target=job._run, args=(job._follow,), name=f"lamina-remote-{task.id}", daemon=True
        ).start()
        return job

    def cancel(self) -> None:
        super().cancel()
        try:
            self.client.cancel(self.id)
        except LaminaError as e:
            self._log(f"cannot cancel on the server: {e}")

    def _follow(self, job: Job) -> Any:
        for info in self.client.watch(self.id):
            self.task = info
            if info.progress is not None:
                self._on_progress(info.progress)
            elif info.state == "queued" and info.queue_position:
                self._on_progress(Progress(phase=f"queued (#{info.queue_position})"))
        final = self.task
        if final.state == "succeeded":
            return final.result
        if final.state == "cancelled":
            raise Cancelled(final.error or "cancelled")
        if final.state == "failed":
            raise LaminaError(final.error or "failed")
        raise LaminaError(f"the server stopped reporting task {self.id} before it ended")


# ---------------------------------------------------------------------------- the service contract


def _plain(ranges: Callable[[], Iterable[Range]] | None, what: str) -> list[Range] | None:
    if ranges is None:
        return None
    if not isinstance(ranges, FixedRanges):  # a live source (CBT) of this machine: not there
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

    def _follow(self, task: JobView) -> Job:
        job = self.client.job(task)
        with self._jobs_lock:
            self._jobs[job.id] = job
        return job

    # ------------------------------------------------------------------ queries

    def info(self) -> RepositoryInfo:
        return self.client.info()

    def capabilities(self) -> Capabilities:
        return self.client.server_info().capabilities

    def list_points(self, volume: str | VolumeRef | None = None) -> list[PointInfo]:
        return self.client.list_points(volume, include_manifest=True)

    def get_point(self, point_ref: str) -> PointInfo:
        return self.client.get_point(point_ref)

    def chain(self, point_ref: str) -> list[PointInfo]:
        return self.client.chain(point_ref, include_manifest=True)

    def list_volumes(self) -> list[VolumeInfo]:
        return self.client.list_volumes()

    def list_clusters(self) -> list[ClusterSummary]:
        return self.client.list_clusters()

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        return self.client.check_clusters(names, timeout=timeout)

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None, *, with_backups: bool = False
    ) -> list[ClusterVolume]:
        listed = self.client.list_cluster_volumes(cluster, namespace)
        if not with_backups:
            return listed
        return volumes_with_backups(cluster, namespace, listed, self.client.list_volumes())

    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]:
        return self.client.list_files(point_ref, path)

    def read_file(self, point_ref: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        return self.client.read_file(point_ref, path, offset=offset, length=length)

    def protect(self, point_ref: str, note: str = "") -> PointInfo:
        return self.client.set_protection(point_ref, True, note=note)

    def unprotect(self, point_ref: str) -> PointInfo:
        return self.client.set_protection(point_ref, False)

    # ------------------------------------------------------------------ jobs

    def _start_backup(self, request: BackupRequest) -> Job:
        """A backup checked here, as in process, then run by the server."""
        task = self.client.start_backup(
            request.source,
            request.volume,
            parent=request.parent,
            changed_ranges=_plain(request.changed_ranges, "changed ranges"),
            changed_ranges_origin=request.changed_ranges_origin,
            allocated_ranges=_plain(request.allocated_ranges, "allocated ranges"),
            allocated_ranges_origin=request.allocated_ranges_origin,
            capacity=request.capacity,
            snapshot_handle=request.snapshot_handle,
            labels=request.labels,
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
        delta: bool = False,
        assume_from: str | None = None,
    ) -> Job:
        return self._follow(
            self.client.start_restore(
                point_ref, target, overwrite=overwrite, delta=delta, assume_from=assume_from
            )
        )

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
        return self._follow(
            self.client.start_copy(
                other,
                direction=direction,
                points=points,
                volume=volume,
                verify=verify,
                other_password=other_password,
            )
        )

    def compare(
        self, other: str, *, volume: str | None = None, other_password: bytes | None = None
    ) -> CompareReport:
        return self.client.compare(other, volume=volume, other_password=other_password)

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

    # ------------------------------------------------------------------ the server's jobs

    def job_views(self) -> list[JobView]:
        return self.client.tasks()

    def job_view(self, job_id: str) -> JobView:
        return self.client.task(job_id, include_log=True)

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
        if limit is not None and limit < 1:
            raise UsageError("the page size must be at least 1")
        return self.client.list_history(
            volume=volume,
            kind=kind,
            since=since,
            failed=failed,
            page_size=limit or 0,
            page_token=page_token,
        )

    def get_job(self, job_id: str) -> JobRecord:
        return self.client.get_job(job_id)

    def job_requests(self, job_id: str) -> RequestCounts | None:
        """The requests the server's job made and their cost, as the server counted them
        (None when it cannot say: an older server, its catalog down)."""
        try:
            record = self.client.get_job(job_id)
        except LaminaError:
            return None
        return RequestCounts(
            dict(record.requests),
            record.retries,
            record.bytes_up,
            record.bytes_down,
            record.cost_usd,
        )

    def list_schedules(self) -> list[ScheduleInfo]:
        return self.client.list_schedules()

    def get_schedule(self, name: str) -> ScheduleInfo:
        return self.client.schedule("GetSchedule", name)

    def pause_schedule(self, name: str) -> ScheduleInfo:
        return self.client.schedule("PauseSchedule", name)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        return self.client.schedule("ResumeSchedule", name)

    def run_schedule_now(self, name: str) -> ScheduleInfo:
        return self.client.schedule("RunScheduleNow", name)

    def remove_schedule(self, name: str) -> None:
        self.client.remove_schedule(name)

    def last_good_backups(self, volumes: Sequence[str]) -> list[LastGoodBackup]:
        return self.client.last_good_backups(volumes)

    def cancel_job(self, job_id: str) -> None:
        self.client.cancel(job_id)

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        """Follow the task on a thread of its own; the first call gives its state now."""
        self.client.task(job_id)  # an unknown id fails here, in the caller's thread
        call = self.client.stub.WatchTask(
            pb.WatchTaskRequest(id=job_id, include_log=True), metadata=self.client.metadata
        )
        stopped = threading.Event()

        def follow() -> None:
            try:
                for message in call:
                    if stopped.is_set():
                        return
                    listener(wire.job_view(message))
            except grpc.RpcError:
                return  # unwatched, or the server went away: the watcher keeps the last state

        threading.Thread(target=follow, name=f"lamina-watch-{job_id}", daemon=True).start()

        def unwatch() -> None:
            stopped.set()
            call.cancel()

        return unwatch

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
