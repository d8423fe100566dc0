"""A typed client of the lamina.v1 API: the service layer's dataclasses, over the wire.

    with ApiClient("127.0.0.1:7443", token=token) as client:
        task = client.start_backup("/dev/vg/db", "prod/db")
        final = client.wait(task.id, on_update=lambda t: print(t.state))

Calls raise LaminaError subclasses with one line (ApiError carries the status code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc

from ..errors import Cancelled, LaminaError, UsageError
from ..progress import Progress
from ..service import (
    ClusterSummary,
    ClusterVolume,
    Entry,
    ExtractReport,
    Job,
    LockInfo,
    MountInfo,
    PointInfo,
    Policy,
    Range,
    Reachability,
    RepositoryInfo,
    VolumeInfo,
    VolumeRef,
)
from . import convert
from .auth import read_token_file
from .errors import error_from_rpc
from .tree import TreeWriter

DEFAULT_TIMEOUT = 60.0

_STATE_NAMES = {
    pb.TASK_STATE_QUEUED: "queued",
    pb.TASK_STATE_RUNNING: "running",
    pb.TASK_STATE_CANCELLING: "cancelling",
    pb.TASK_STATE_CANCELLED: "cancelled",
    pb.TASK_STATE_SUCCEEDED: "succeeded",
    pb.TASK_STATE_FAILED: "failed",
}
FINISHED_STATES = ("cancelled", "succeeded", "failed")


@dataclass(frozen=True)
class Capabilities:
    browse: bool
    read_files: bool
    extract: bool
    delete: bool
    mount: bool
    protect: bool


@dataclass(frozen=True)
class ServerInfo:
    version: str
    repository: RepositoryInfo
    capabilities: Capabilities
    max_backups: int
    max_backups_per_volume: int
    restricted_paths: bool


@dataclass(frozen=True)
class TaskInfo:
    """A task as the server reported it at one moment."""

    id: str
    kind: str
    description: str
    state: str  # queued, running, cancelling, cancelled, succeeded, failed
    queue_position: int
    progress: Progress | None
    error: str
    summary: str
    created: float
    started: float | None
    finished: float | None
    volume: VolumeRef | None
    point: str
    log: tuple[str, ...] = ()
    # PointInfo (backup, consolidate), dict (restore), VerifyReport, ExtractReport,
    # list[str] (delete), ForgetReport, PruneReport
    result: Any = field(default=None, compare=False)

    @property
    def done(self) -> bool:
        return self.state in FINISHED_STATES


def task_info(message: pb.Task) -> TaskInfo:
    kind = message.WhichOneof("result")
    result: Any = None
    if kind == "backup":
        result = convert.point_info(message.backup)
    elif kind == "restore":
        result = convert.restore_result(message.restore)
    elif kind == "verify":
        result = convert.verify_report(message.verify)
    elif kind == "extract":
        result = convert.extract_report(message.extract)
    elif kind == "delete":
        result = list(message.delete.children)
    elif kind == "forget":
        result = convert.forget_report(message.forget)
    elif kind == "prune":
        result = convert.prune_report(message.prune)
    elif kind == "consolidate":
        result = convert.point_info(message.consolidate)
    return TaskInfo(
        id=message.id,
        kind=message.kind,
        description=message.description,
        state=_STATE_NAMES.get(message.state, "unknown"),
        queue_position=message.queue_position,
        progress=convert.progress(message.progress) if message.HasField("progress") else None,
        error=message.error,
        summary=message.summary,
        created=convert.seconds_of(message.created),
        started=convert.seconds_of(message.started) if message.HasField("started") else None,
        finished=convert.seconds_of(message.finished) if message.HasField("finished") else None,
        volume=convert.volume_ref(message.volume) if message.HasField("volume") else None,
        point=message.point,
        log=tuple(message.log),
        result=result,
    )


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
        c = m.capabilities
        return ServerInfo(
            version=m.version,
            repository=convert.repository_info(m.repository),
            capabilities=Capabilities(
                c.browse, c.read_files, c.extract, c.delete, c.mount, c.protect
            ),
            max_backups=m.limits.max_backups,
            max_backups_per_volume=m.limits.max_backups_per_volume,
            restricted_paths=m.limits.restricted_paths,
        )

    def info(self) -> RepositoryInfo:
        return self.server_info().repository

    def list_clusters(self) -> list[ClusterSummary]:
        m = self._call(self.stub.ListClusters, pb.ListClustersRequest())
        return [convert.cluster_summary(c) for c in m.clusters]

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        wanted = list(names) if names is not None else None
        if wanted == []:
            return {}
        request = pb.CheckClustersRequest(names=wanted or [], timeout_seconds=timeout)
        m = self._call(self.stub.CheckClusters, request)
        return {c.name: convert.reachability(c) for c in m.checks}

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None
    ) -> list[ClusterVolume]:
        request = pb.ListClusterVolumesRequest(cluster=cluster, namespace=namespace or "")
        m = self._call(self.stub.ListClusterVolumes, request)
        return [convert.cluster_volume(v) for v in m.volumes]

    def list_volumes(self) -> list[VolumeInfo]:
        m = self._call(self.stub.ListVolumes, pb.ListVolumesRequest())
        return [convert.volume_info(v) for v in m.volumes]

    def point_messages(
        self, volume: str | VolumeRef | None = None, *, include_manifest: bool = False
    ) -> list[pb.Point]:
        """Points as sent, with what PointInfo has no room for (verify_state)."""
        request = pb.ListPointsRequest(
            volume=str(volume) if volume is not None else "", include_manifest=include_manifest
        )
        return list(self._call(self.stub.ListPoints, request).points)

    def list_points(
        self, volume: str | VolumeRef | None = None, *, include_manifest: bool = False
    ) -> list[PointInfo]:
        return [
            convert.point_info(p)
            for p in self.point_messages(volume, include_manifest=include_manifest)
        ]

    def get_point(self, ref: str) -> PointInfo:
        return convert.point_info(self._call(self.stub.GetPoint, pb.GetPointRequest(point=ref)))

    def chain_messages(self, ref: str, *, include_manifest: bool = False) -> list[pb.Point]:
        request = pb.GetChainRequest(point=ref, include_manifest=include_manifest)
        return list(self._call(self.stub.GetChain, request).points)

    def chain(self, ref: str, *, include_manifest: bool = False) -> list[PointInfo]:
        return [
            convert.point_info(p)
            for p in self.chain_messages(ref, include_manifest=include_manifest)
        ]

    def set_protection(self, point: str, protected: bool, *, note: str = "") -> PointInfo:
        request = pb.SetProtectionRequest(point=point, protected=protected, note=note)
        return convert.point_info(self._call(self.stub.SetProtection, request))

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
    ) -> TaskInfo:
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
        return task_info(self._call(self.stub.StartBackup, request))

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> TaskInfo:
        request = pb.StartVolumeBackupRequest(cluster=cluster, namespace=namespace, name=name)
        return task_info(self._call(self.stub.StartVolumeBackup, request))

    def start_restore(self, point: str, target: str, *, overwrite: bool = False) -> TaskInfo:
        """Restore to ``target``, a path on the server's machine."""
        request = pb.StartRestoreRequest(point=point, target=target, overwrite=overwrite)
        return task_info(self._call(self.stub.StartRestore, request))

    def start_verify(self, point: str | None = None, *, deep: bool = False) -> TaskInfo:
        request = pb.StartVerifyRequest(point=point or "", deep=deep)
        return task_info(self._call(self.stub.StartVerify, request))

    def start_extract(self, point: str, paths: Sequence[str], target: str) -> TaskInfo:
        """Extract into ``target``, a folder on the server's machine."""
        request = pb.StartExtractRequest(
            point=point, paths=[convert.file_path_message(p) for p in paths], target=target
        )
        return task_info(self._call(self.stub.StartExtract, request))

    def start_delete(self, point: str) -> TaskInfo:
        return task_info(self._call(self.stub.StartDelete, pb.StartDeleteRequest(point=point)))

    def start_forget(
        self, policy: Policy, *, volume: str | None = None, dry_run: bool = False
    ) -> TaskInfo:
        within = ""
        if policy.within is not None:
            within = f"{int(policy.within.total_seconds() // 3600)}h"
        request = pb.StartForgetRequest(
            keep_last=policy.last,
            keep_hourly=policy.hourly,
            keep_daily=policy.daily,
            keep_weekly=policy.weekly,
            keep_monthly=policy.monthly,
            keep_yearly=policy.yearly,
            keep_within=within,
            volume=volume or "",
            dry_run=dry_run,
        )
        return task_info(self._call(self.stub.StartForget, request))

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> TaskInfo:
        request = pb.StartPruneRequest(dry_run=dry_run, repack_below=repack_below)
        return task_info(self._call(self.stub.StartPrune, request))

    def start_consolidate(self, point: str, until: str | None = None) -> TaskInfo:
        request = pb.StartConsolidateRequest(point=point, until=until or "")
        return task_info(self._call(self.stub.StartConsolidate, request))

    def list_locks(self) -> list[LockInfo]:
        response = self._call(self.stub.ListLocks, pb.ListLocksRequest())
        return [convert.lock_info(m) for m in response.locks]

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]:
        response = self._call(self.stub.Unlock, pb.UnlockRequest(all=all_locks))
        return [convert.lock_info(m) for m in response.removed]

    # ------------------------------------------------------------------ mounts

    def mount(self, point: str | None, mountpoint: str, *, cache_bytes: int = 0) -> MountInfo:
        """Mount on the server's machine; ``mountpoint`` is a folder there."""
        request = pb.MountRequest(point=point or "", mountpoint=mountpoint, cache_bytes=cache_bytes)
        return convert.mount_info(self._call(self.stub.Mount, request))

    def unmount(self, mountpoint: str) -> None:
        self._call(self.stub.Unmount, pb.UnmountRequest(mountpoint=mountpoint))

    def list_mounts(self) -> list[MountInfo]:
        response = self._call(self.stub.ListMounts, pb.ListMountsRequest())
        return [convert.mount_info(m) for m in response.mounts]

    def tasks(self) -> list[TaskInfo]:
        return [task_info(t) for t in self._call(self.stub.ListTasks, pb.ListTasksRequest()).tasks]

    def task(self, task_id: str, *, include_log: bool = False) -> TaskInfo:
        request = pb.GetTaskRequest(id=task_id, include_log=include_log)
        return task_info(self._call(self.stub.GetTask, request))

    def cancel(self, task_id: str) -> TaskInfo:
        return task_info(self._call(self.stub.CancelTask, pb.CancelTaskRequest(id=task_id)))

    def watch(self, task_id: str, *, include_log: bool = False) -> Iterator[TaskInfo]:
        """The task now, then at every change, ending with its finished state."""
        request = pb.WatchTaskRequest(id=task_id, include_log=include_log)
        for message in self._stream(self.stub.WatchTask, request):
            yield task_info(message)

    def wait(
        self, task_id: str, *, on_update: Callable[[TaskInfo], None] | None = None
    ) -> TaskInfo:
        """Watch a task to its end; returns its final state (whatever that is)."""
        last: TaskInfo | None = None
        for info in self.watch(task_id):
            last = info
            if on_update is not None:
                on_update(info)
        if last is None or not last.done:
            raise LaminaError(f"the server stopped reporting task {task_id} before it ended")
        return last

    def job(self, task: TaskInfo) -> RemoteJob:
        """A service-layer Job that mirrors a remote task (progress, result, cancel)."""
        return RemoteJob.follow(self, task)

    # ------------------------------------------------------------------ files

    def list_files(self, point: str, path: str = "/") -> list[Entry]:
        request = pb.ListFilesRequest(point=point, path=convert.file_path_message(path))
        return [convert.entry(e) for e in self._call(self.stub.ListFiles, request).entries]

    def read_file(self, point: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a file from ``offset`` (``length`` 0: to its end), held in memory."""
        out = bytearray()
        for chunk in self.file_chunks(point, path, offset=offset, length=length):
            out += chunk.data if chunk.data else bytes(chunk.zero_length)
        return bytes(out)

    def file_chunks(
        self, point: str, path: str, *, offset: int = 0, length: int = 0
    ) -> Iterator[pb.Chunk]:
        request = pb.ReadFileRequest(
            point=point, path=convert.file_path_message(path), offset=offset, length=length
        )
        for message in self._stream(self.stub.ReadFile, request):
            if message.WhichOneof("item") == "chunk":
                yield message.chunk

    def download(self, point: str, path: str, target_dir: str) -> ExtractReport:
        """Copy a file or folder of a point into ``target_dir`` on this machine, safely."""
        request = pb.ReadTreeRequest(point=point, path=convert.file_path_message(path))
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
    job would return (PointInfo, a restore dict, VerifyReport, ExtractReport).
    """

    client: ApiClient
    task: TaskInfo

    @classmethod
    def follow(cls, client: ApiClient, task: TaskInfo) -> RemoteJob:
        job = cls(kind=task.kind, description=task.description, id=task.id)
        job.client = client
        job.task = task
        job.created = task.created
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
