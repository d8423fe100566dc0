"""The lamina.v1 gRPC server: the service layer over the wire, long operations as tasks.

``ApiServer`` puts together the LaminaService servicer, bearer-token checking, standard
health checking and server reflection. ``serve()`` runs one until SIGTERM or SIGINT and
then shuts down gracefully: no new calls, running tasks get a grace period, the rest are
cancelled, and the log says which finished and which were cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc

from .. import __version__
from ..errors import LaminaError, UsageError
from ..service import (
    PATH_MAX,
    JobView,
    PointInfo,
    Policy,
    Range,
    Service,
    check_backup_options,
    check_cluster_volume,
    checked_ranges,
    parse_volume,
    wire,
)
from ..service.rpc_errors import (
    ERROR_CLASS_KEY,
    PathNotAllowed,
    SourceNotFound,
    TooManyStreams,
    Unimplemented,
    one_line,
    status_of,
)
from ..units import plural
from .auth import BearerTokenInterceptor, is_loopback, split_address
from .tasks import TaskManager
from .tree import checked_path, file_chunks, tree_items

log = logging.getLogger("lamina.api")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LaminaService"].full_name
# A server stream (WatchTask, ReadFile, ReadTree) holds a worker thread while it is open.
# Streams are capped per client connection and in all, so the threads left over always
# serve unary calls and health checks: the excess streams get RESOURCE_EXHAUSTED, nothing else.
MAX_STREAMS = 128
MAX_STREAMS_PER_CLIENT = 32  # a terminal UI follows each of its running and queued jobs
UNARY_WORKERS = 32
# Calls past every worker wait in a bounded queue; beyond it gRPC answers RESOURCE_EXHAUSTED.
MAX_CONCURRENT_CALLS = MAX_STREAMS + UNARY_WORKERS + 256
CANCEL_WAIT = 60.0  # after the grace period, how long cancelled tasks get to stop
MAX_CHECK_TIMEOUT = 30.0

# ---------------------------------------------------------------------------- errors


def _abort(context: grpc.ServicerContext, error: BaseException) -> Any:
    if isinstance(error, LaminaError):
        code, message = status_of(error)
        context.set_trailing_metadata(((ERROR_CLASS_KEY, type(error).__name__),))
        return context.abort(code, message)
    log.error("internal error", exc_info=error)
    return context.abort(
        grpc.StatusCode.INTERNAL,
        one_line(f"internal error: {type(error).__name__}: {error} (details in the server log)"),
    )


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def unary(
    method: Callable[[S, Req, grpc.ServicerContext], Resp],
) -> Callable[[S, Req, grpc.ServicerContext], Resp]:
    """Answer LaminaErrors with their status code and one line; nothing else leaks."""

    @functools.wraps(method)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return method(self, request, context)
        except Exception as e:
            return _abort(context, e)  # type: ignore[no-any-return]

    return wrapper


class StreamLimiter:
    """Counts open server streams, per client connection and in all."""

    def __init__(self, total: int = MAX_STREAMS, per_client: int = MAX_STREAMS_PER_CLIENT) -> None:
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[None]:
        with self._lock:
            if self._open[client] >= self.per_client:
                raise TooManyStreams(
                    f"this client has {self.per_client} streams open, the most a client may; "
                    f"close one first"
                )
            if sum(self._open.values()) >= self.total:
                raise TooManyStreams(
                    f"the server has {self.total} streams open, the most it serves; try again later"
                )
            self._open[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]

    def open_streams(self) -> int:
        with self._lock:
            return sum(self._open.values())


class _Streams(Protocol):
    streams: StreamLimiter


SS = TypeVar("SS", bound=_Streams)


def streaming(
    method: Callable[[SS, Req, grpc.ServicerContext], Iterator[Resp]],
) -> Callable[[SS, Req, grpc.ServicerContext], Iterator[Resp]]:
    """A server stream: counted against the stream caps, errors answered as by ``unary``."""

    @functools.wraps(method)
    def wrapper(self: SS, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            with self.streams.slot(context.peer()):
                yield from method(self, request, context)
        except Exception as e:
            _abort(context, e)

    return wrapper


# ---------------------------------------------------------------------------- paths


class PathPolicy:
    """Paths of the server's machine that requests may name: absolute, and under one of
    ``roots`` when roots are given. Symlinks are resolved when the request arrives, and
    the resolved path is what the service uses; writes then walk it from its root again
    without following any symlink (backend/safewrite.py), so one planted meanwhile fails."""

    def __init__(self, roots: Sequence[str] = ()) -> None:
        self.roots = [os.path.realpath(r) for r in roots]

    def check(self, path: str, what: str) -> str:
        if not path:
            raise UsageError(f"give the {what} (an absolute path on the server)")
        if "\0" in path:
            raise UsageError(f"the {what} must not contain a NUL byte")
        if len(os.fsencode(path)) > PATH_MAX:
            raise UsageError(f"the {what} is longer than {PATH_MAX} bytes")
        if not os.path.isabs(path):
            raise UsageError(f"the {what} must be an absolute path on the server: {path!r}")
        if self.roots:
            real = os.path.realpath(path)
            if not any(os.path.commonpath([real, root]) == root for root in self.roots):
                raise PathNotAllowed(
                    f"the {what} {path} is outside the folders this server allows (--allow-path)"
                )
            return real
        return path


# ---------------------------------------------------------------------------- tasks


def task_message(view: JobView, *, include_log: bool = False) -> pb.Task:
    return wire.job_message(view, include_log=include_log)


# ---------------------------------------------------------------------------- the servicer


def _ranges(message: pb.ByteRanges, what: str) -> list[Range]:
    ranges = [(r.offset, r.length) for r in message.ranges]
    # Order, overlap and sizes now, as INVALID_ARGUMENT; the volume's bounds when it runs.
    list(checked_ranges(ranges, 1 << 63, what))
    return ranges


def _policy(request: pb.StartForgetRequest) -> Policy:
    policy = wire.policy(request)
    if policy.empty:
        # Refused before a task exists: forget never removes everything.
        raise UsageError("give at least one keep_* field; forget never removes everything")
    return policy


def _required(value: str, what: str) -> str:
    if not value:
        raise UsageError(f"give the {what}")
    return value


class LaminaServicer(pb_grpc.LaminaServiceServicer):
    def __init__(
        self,
        service: Service,
        tasks: TaskManager,
        paths: PathPolicy,
    ) -> None:
        self.service = service
        self.tasks = tasks
        self.paths = paths
        self.streams = StreamLimiter()

    def _offers(self, capability: str) -> bool:
        return bool(getattr(self.service.capabilities(), capability))

    def _point_id(self, ref: str) -> str:
        return self.service.get_point(_required(ref, "point (id or unique prefix)")).id

    # ------------------------------------------------------------------ server

    @unary
    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        return pb.ServerInfo(
            version=__version__,
            repository=wire.repository_message(self.service.info()),
            capabilities=wire.capabilities_message(self.service.capabilities()),
            limits=pb.Limits(
                max_backups=self.service.backup_caps.max_backups,
                max_backups_per_volume=self.service.backup_caps.max_backups_per_volume,
                restricted_paths=bool(self.paths.roots),
            ),
        )

    # ------------------------------------------------------------------ clusters

    @unary
    def ListClusters(
        self, request: pb.ListClustersRequest, context: grpc.ServicerContext
    ) -> pb.ListClustersResponse:
        clusters = self.service.list_clusters()
        return pb.ListClustersResponse(clusters=[wire.cluster_message(c) for c in clusters])

    @unary
    def CheckClusters(
        self, request: pb.CheckClustersRequest, context: grpc.ServicerContext
    ) -> pb.CheckClustersResponse:
        timeout = request.timeout_seconds or 3.0
        if not 0 < timeout <= MAX_CHECK_TIMEOUT:
            raise UsageError(f"timeout_seconds must be between 0 and {MAX_CHECK_TIMEOUT:.0f}")
        names = list(request.names) or None
        results = self.service.check_clusters(names, timeout=timeout)
        return pb.CheckClustersResponse(
            checks=[wire.check_message(name, r) for name, r in sorted(results.items())]
        )

    @unary
    def ListClusterVolumes(
        self, request: pb.ListClusterVolumesRequest, context: grpc.ServicerContext
    ) -> pb.ListClusterVolumesResponse:
        cluster = _required(request.cluster, "cluster")
        volumes = self.service.list_cluster_volumes(cluster, request.namespace or None)
        return pb.ListClusterVolumesResponse(
            volumes=[wire.cluster_volume_message(v) for v in volumes]
        )

    # ------------------------------------------------------------------ repository

    @unary
    def ListVolumes(
        self, request: pb.ListVolumesRequest, context: grpc.ServicerContext
    ) -> pb.ListVolumesResponse:
        return pb.ListVolumesResponse(
            volumes=[wire.volume_summary_message(v) for v in self.service.list_volumes()]
        )

    def _points(self, points: list[PointInfo], manifest: bool) -> list[pb.Point]:
        return [wire.point_message(p, manifest=manifest) for p in points]

    @unary
    def ListPoints(
        self, request: pb.ListPointsRequest, context: grpc.ServicerContext
    ) -> pb.ListPointsResponse:
        points = self.service.list_points(request.volume or None)
        return pb.ListPointsResponse(points=self._points(points, request.include_manifest))

    @unary
    def GetPoint(self, request: pb.GetPointRequest, context: grpc.ServicerContext) -> pb.Point:
        point = self.service.get_point(_required(request.point, "point (id or unique prefix)"))
        return self._points([point], True)[0]

    @unary
    def GetChain(
        self, request: pb.GetChainRequest, context: grpc.ServicerContext
    ) -> pb.GetChainResponse:
        chain = self.service.chain(_required(request.point, "point (id or unique prefix)"))
        return pb.GetChainResponse(points=self._points(chain, request.include_manifest))

    @unary
    def SetProtection(
        self, request: pb.SetProtectionRequest, context: grpc.ServicerContext
    ) -> pb.Point:
        if not (self._offers("protect")):
            raise Unimplemented("this server cannot protect points")
        ref = _required(request.point, "point (id or unique prefix)")
        if request.protected:
            point = self.service.protect(ref, request.note)
        else:
            point = self.service.unprotect(ref)
        return self._points([self.service.get_point(point.id)], True)[0]

    # ------------------------------------------------------------------ starting tasks

    @unary
    def StartBackup(self, request: pb.StartBackupRequest, context: grpc.ServicerContext) -> pb.Task:
        source = self.paths.check(request.source, "source")
        ref, parent, labels = check_backup_options(
            _required(request.volume, "volume name"),
            parent=request.parent or "auto",
            snapshot_handle=request.snapshot_handle
            if request.HasField("snapshot_handle")
            else None,
            labels=dict(request.labels),
        )
        if not os.path.exists(source):
            raise SourceNotFound(f"source {source} does not exist on the server")
        changed = (
            _ranges(request.changed_ranges, "changed ranges")
            if request.HasField("changed_ranges")
            else None
        )
        allocated = (
            _ranges(request.allocated_ranges, "allocated ranges")
            if request.HasField("allocated_ranges")
            else None
        )
        if request.HasField("capacity") and request.capacity <= 0:
            raise UsageError("capacity must be positive")
        service = self.service

        def launch() -> Any:
            return service.start_backup(
                source,
                ref,
                parent=parent,
                changed_ranges=changed,
                changed_ranges_origin=request.changed_ranges.origin or "API request",
                allocated_ranges=(lambda: allocated) if allocated is not None else None,
                allocated_ranges_origin=request.allocated_ranges.origin or "API request",
                capacity=request.capacity if request.HasField("capacity") else None,
                snapshot_handle=(
                    request.snapshot_handle if request.HasField("snapshot_handle") else None
                ),
                labels=labels,
            )

        view = self.tasks.submit(launch)
        return task_message(view)

    @unary
    def StartVolumeBackup(
        self, request: pb.StartVolumeBackupRequest, context: grpc.ServicerContext
    ) -> pb.Task:
        ref = check_cluster_volume(
            _required(request.cluster, "cluster"),
            _required(request.namespace, "namespace"),
            _required(request.name, "volume name"),
        )
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_volume_backup(ref.cluster, ref.namespace, ref.name)
        )
        return task_message(view)

    @unary
    def StartRestore(
        self, request: pb.StartRestoreRequest, context: grpc.ServicerContext
    ) -> pb.Task:
        target = self.paths.check(request.target, "restore target")
        point = self._point_id(request.point)
        assume_from = self._point_id(request.assume_from) if request.assume_from else None
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_restore(
                point,
                target,
                overwrite=request.overwrite,
                within=self.paths.roots,
                delta=request.delta,
                assume_from=assume_from,
            )
        )
        return task_message(view)

    @unary
    def StartVerify(self, request: pb.StartVerifyRequest, context: grpc.ServicerContext) -> pb.Task:
        point = self._point_id(request.point) if request.point else None
        service = self.service
        view = self.tasks.submit(lambda: service.start_verify(point, deep=request.deep))
        return task_message(view)

    @unary
    def StartExtract(
        self, request: pb.StartExtractRequest, context: grpc.ServicerContext
    ) -> pb.Task:
        if not self._offers("extract"):
            raise Unimplemented("this server cannot extract files")
        target = self.paths.check(request.target, "extract target folder")
        paths = [checked_path(wire.file_path_text(p)) for p in request.paths]
        if not paths:
            raise UsageError("name at least one path to extract")
        point = self._point_id(request.point)
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_extract(point, paths, target, within=self.paths.roots)
        )
        return task_message(view)

    @unary
    def StartDelete(self, request: pb.StartDeleteRequest, context: grpc.ServicerContext) -> pb.Task:
        if not self._offers("delete"):
            raise Unimplemented("this server cannot delete points")
        point = self._point_id(request.point)
        service = self.service
        view = self.tasks.submit(lambda: service.start_delete(point))
        return task_message(view)

    @unary
    def StartForget(self, request: pb.StartForgetRequest, context: grpc.ServicerContext) -> pb.Task:
        policy = _policy(request)
        volume = request.volume or None
        if volume is not None:
            parse_volume(volume)  # a malformed name fails now, not in the task
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_forget(policy, volume=volume, dry_run=request.dry_run)
        )
        return task_message(view)

    @unary
    def StartPrune(self, request: pb.StartPruneRequest, context: grpc.ServicerContext) -> pb.Task:
        repack_below = request.repack_below if request.HasField("repack_below") else 0.5
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_prune(dry_run=request.dry_run, repack_below=repack_below)
        )
        return task_message(view)

    @unary
    def StartConsolidate(
        self, request: pb.StartConsolidateRequest, context: grpc.ServicerContext
    ) -> pb.Task:
        point = self._point_id(request.point)
        until = self.service.get_point(request.until).id if request.until else None
        service = self.service
        view = self.tasks.submit(lambda: service.start_consolidate(point, until))
        return task_message(view)

    # ------------------------------------------------------------------ other repositories

    def _other(self, other: pb.OtherRepository) -> tuple[str, bytes | None]:
        """The other repository's URL (a folder of the server's machine under the allowed
        paths, like every path of a request) and its password."""
        url = _required(other.url, "other repository (an s3:// URL or a folder on the server)")
        if "\0" in url:
            raise UsageError("the other repository must not contain a NUL byte")
        if url.startswith("s3://"):
            return url, other.password or None
        if "://" in url and not url.startswith("file://"):
            raise UsageError(f"the other repository is an s3:// URL or a folder, not {url!r}")
        folder = self.paths.check(url.removeprefix("file://"), "other repository")
        return folder, other.password or None

    @unary
    def StartCopy(self, request: pb.StartCopyRequest, context: grpc.ServicerContext) -> pb.Task:
        other, password = self._other(request.other)
        direction = request.direction or "to"
        service = self.service
        view = self.tasks.submit(
            lambda: service.start_copy(
                other,
                direction=direction,
                points=list(request.points),
                volume=request.volume or None,
                verify=request.verify,
                other_password=password,
            )
        )
        return task_message(view)

    @unary
    def Compare(
        self, request: pb.CompareRequest, context: grpc.ServicerContext
    ) -> pb.CompareResult:
        other, password = self._other(request.other)
        report = self.service.compare(other, volume=request.volume or None, other_password=password)
        return wire.compare_message(report)

    # ------------------------------------------------------------------ locks

    @unary
    def ListLocks(
        self, request: pb.ListLocksRequest, context: grpc.ServicerContext
    ) -> pb.ListLocksResponse:
        return pb.ListLocksResponse(
            locks=[wire.lock_message(lock) for lock in self.service.list_locks()]
        )

    @unary
    def Unlock(self, request: pb.UnlockRequest, context: grpc.ServicerContext) -> pb.UnlockResponse:
        removed = self.service.unlock(all_locks=request.all)
        return pb.UnlockResponse(removed=[wire.lock_message(lock) for lock in removed])

    # ------------------------------------------------------------------ mounts

    def _can_mount(self) -> bool:
        return self._offers("mount")

    @unary
    def Mount(self, request: pb.MountRequest, context: grpc.ServicerContext) -> pb.MountInfo:
        if not self._can_mount():
            raise Unimplemented("this server cannot mount")
        mountpoint = self.paths.check(request.mountpoint, "mountpoint")
        if request.cache_bytes < 0:
            raise UsageError("cache_bytes must not be negative")
        point = self._point_id(request.point) if request.point else None
        if request.cache_bytes:
            mount = self.service.mount(point, mountpoint, cache_bytes=request.cache_bytes)
        else:
            mount = self.service.mount(point, mountpoint)
        return wire.mount_message(mount)

    @unary
    def Unmount(
        self, request: pb.UnmountRequest, context: grpc.ServicerContext
    ) -> pb.UnmountResponse:
        if not self._can_mount():
            raise Unimplemented("this server cannot mount")
        mountpoint = self.paths.check(request.mountpoint, "mountpoint")
        self.service.unmount(mountpoint)
        return pb.UnmountResponse()

    @unary
    def ListMounts(
        self, request: pb.ListMountsRequest, context: grpc.ServicerContext
    ) -> pb.ListMountsResponse:
        if not self._can_mount():
            raise Unimplemented("this server cannot mount")
        return pb.ListMountsResponse(
            mounts=[wire.mount_message(m) for m in self.service.list_mounts()]
        )

    # ------------------------------------------------------------------ tasks

    @unary
    def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        return pb.ListTasksResponse(tasks=[task_message(v) for v in self.tasks.all()])

    @unary
    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        view = self.tasks.get(_required(request.id, "task id"))
        return task_message(view, include_log=request.include_log)

    # ------------------------------------------------------------------ history

    @unary
    def ListHistory(
        self, request: pb.ListHistoryRequest, context: grpc.ServicerContext
    ) -> pb.ListHistoryResponse:
        if request.page_size < 0:
            raise UsageError("page_size must not be negative")
        page = self.service.list_history(
            volume=request.volume or None,
            kind=request.kind or None,
            since=wire.seconds_of(request.since) if request.HasField("since") else None,
            failed=request.failed,
            limit=request.page_size or None,
            page_token=request.page_token,
        )
        return wire.history_page_message(page)

    @unary
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.JobRecord:
        return wire.history_job_message(self.service.get_job(_required(request.id, "job id")))

    # ------------------------------------------------------------------ schedules

    @unary
    def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: grpc.ServicerContext
    ) -> pb.ListSchedulesResponse:
        found = self.service.list_schedules()
        return pb.ListSchedulesResponse(schedules=[wire.schedule_message(s) for s in found])

    @unary
    def GetSchedule(
        self, request: pb.ScheduleRequest, context: grpc.ServicerContext
    ) -> pb.Schedule:
        info = self.service.get_schedule(_required(request.name, "schedule name"))
        return wire.schedule_message(info)

    @unary
    def PauseSchedule(
        self, request: pb.ScheduleRequest, context: grpc.ServicerContext
    ) -> pb.Schedule:
        info = self.service.pause_schedule(_required(request.name, "schedule name"))
        return wire.schedule_message(info)

    @unary
    def ResumeSchedule(
        self, request: pb.ScheduleRequest, context: grpc.ServicerContext
    ) -> pb.Schedule:
        info = self.service.resume_schedule(_required(request.name, "schedule name"))
        return wire.schedule_message(info)

    @unary
    def RunScheduleNow(
        self, request: pb.ScheduleRequest, context: grpc.ServicerContext
    ) -> pb.Schedule:
        info = self.service.run_schedule_now(_required(request.name, "schedule name"))
        return wire.schedule_message(info)

    @unary
    def RemoveSchedule(
        self, request: pb.ScheduleRequest, context: grpc.ServicerContext
    ) -> pb.RemoveScheduleResponse:
        self.service.remove_schedule(_required(request.name, "schedule name"))
        return pb.RemoveScheduleResponse()

    @unary
    def ListLastGoodBackups(
        self, request: pb.ListLastGoodBackupsRequest, context: grpc.ServicerContext
    ) -> pb.ListLastGoodBackupsResponse:
        found = self.service.last_good_backups(list(request.volumes))
        return pb.ListLastGoodBackupsResponse(backups=[wire.last_good_message(b) for b in found])

    @unary
    def CancelTask(self, request: pb.CancelTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        return task_message(self.tasks.cancel(_required(request.id, "task id")))

    @streaming
    def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Task]:
        task_id = _required(request.id, "task id")
        context.add_callback(self.tasks.wake_watchers)
        for view in self.tasks.watch(task_id, context.is_active):
            yield task_message(view, include_log=request.include_log)

    # ------------------------------------------------------------------ files

    @unary
    def ListFiles(
        self, request: pb.ListFilesRequest, context: grpc.ServicerContext
    ) -> pb.ListFilesResponse:
        if not self._offers("browse"):
            raise Unimplemented("this server cannot list files inside points")
        point = _required(request.point, "point (id or unique prefix)")
        path = checked_path(wire.file_path_text(request.path))
        entries = self.service.list_files(point, path)
        return pb.ListFilesResponse(entries=[wire.entry_message(e) for e in entries])

    @streaming
    def ReadFile(
        self, request: pb.ReadFileRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadFileResponse]:
        if not self._offers("read_files"):
            raise Unimplemented("this server cannot read files inside points")
        if request.offset < 0 or request.length < 0:
            raise UsageError("offset and length must not be negative")
        path = checked_path(wire.file_path_text(request.path))
        files = self.service.point_files(_required(request.point, "point (id or unique prefix)"))
        entry = files.lookup(path)
        if entry.kind != "file":
            raise UsageError(f"{path} is a {entry.kind}, not a regular file (use ReadTree)")
        end = request.offset + request.length if request.length else entry.size
        yield pb.ReadFileResponse(entry=wire.entry_message(entry))
        for chunk in file_chunks(files, entry, request.offset, end):
            yield pb.ReadFileResponse(chunk=chunk)

    @streaming
    def ReadTree(
        self, request: pb.ReadTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TreeItem]:
        if not self._offers("read_files"):
            raise Unimplemented("this server cannot read files inside points")
        path = wire.file_path_text(request.path)
        files = self.service.point_files(_required(request.point, "point (id or unique prefix)"))
        yield from tree_items(files, path)


# ---------------------------------------------------------------------------- the server


@dataclass
class ServerOptions:
    listen: str
    token: str | None  # None: no authentication (loopback addresses only)
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    allowed_paths: list[str] = field(default_factory=list)


class ServeError(LaminaError):
    """The API server cannot start as asked."""


def _check_address_free(listen: str) -> None:
    """Fail with one line before gRPC logs its own complaint about a busy address."""
    host, port = split_address(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ServeError(f"cannot listen on {listen}: {e.strerror or e}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                reason = "the address is in use" if e.errno == errno.EADDRINUSE else e.strerror
                raise ServeError(f"cannot listen on {listen}: {reason}") from None


class ApiServer:
    """A running lamina.v1 server over one Service."""

    def __init__(self, service: Service, options: ServerOptions) -> None:
        if options.token is None and not is_loopback(options.listen):
            raise UsageError(
                f"--insecure-no-auth is only allowed on a loopback address, not {options.listen}"
            )
        if (options.tls_cert is None) != (options.tls_key is None):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        self.service = service
        self.options = options
        self.tasks = TaskManager()
        interceptors: list[grpc.ServerInterceptor] = (
            [BearerTokenInterceptor(options.token)] if options.token else []
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=MAX_STREAMS + UNARY_WORKERS, thread_name_prefix="lamina-api"
            ),
            interceptors=interceptors,
            maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS,
            # gRPC shares ports by default: a second server on a busy port must fail instead.
            options=[("grpc.so_reuseport", 0)],
        )
        self.servicer = LaminaServicer(service, self.tasks, PathPolicy(options.allowed_paths))
        pb_grpc.add_LaminaServiceServicer_to_server(self.servicer, self._server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        _check_address_free(options.listen)
        try:
            if options.tls_cert is not None and options.tls_key is not None:
                credentials = grpc.ssl_server_credentials([(options.tls_key, options.tls_cert)])
                port = self._server.add_secure_port(options.listen, credentials)
            else:
                port = self._server.add_insecure_port(options.listen)
        except RuntimeError:
            raise ServeError(
                f"cannot listen on {options.listen}: the address is in use or not on this machine"
            ) from None
        if port == 0:
            raise ServeError(f"cannot listen on {options.listen} (address in use or not local)")
        host = options.listen.rpartition(":")[0]
        self.address = f"{host}:{port}"
        self.tls = options.tls_cert is not None

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def shutdown(
        self, grace: float, *, cancel_wait: float = CANCEL_WAIT
    ) -> tuple[list[JobView], list[JobView]]:
        """Stop taking calls, give running tasks ``grace`` seconds, then cancel the rest.

        Open WatchTask streams see their task to its end. Returns (finished, cancelled).
        """
        self.health.enter_graceful_shutdown()
        stopped = self._server.stop(grace + cancel_wait)
        finished, cancelled = self.tasks.shutdown(grace, cancel_wait=cancel_wait)
        stopped.wait(grace + cancel_wait + 5)
        return finished, cancelled

    def stop_now(self) -> None:
        """Stop at once (tests, failed starts): running tasks are cancelled."""
        self.shutdown(0.0, cancel_wait=10.0)


def serve(
    service: Service,
    options: ServerOptions,
    *,
    grace: float,
    on_ready: Callable[[ApiServer], None] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit status."""
    server = ApiServer(service, options)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if options.token is None:
            log.warning(
                "authentication is off (--insecure-no-auth): anyone on this machine can call"
            )
        elif not server.tls and not is_loopback(options.listen):
            log.warning("no TLS: the bearer token crosses the network in clear text")
        log.info(
            "listening on %s (%s, %s); repository %s; at most %d backups, %d per volume",
            server.address,
            "TLS" if server.tls else "plaintext",
            "token required" if options.token else "no authentication",
            service.repo_url,
            service.backup_caps.max_backups,
            service.backup_caps.max_backups_per_volume,
        )
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
        running = [t for t in server.tasks.all() if t.state in ("running", "cancelling")]
        queued = [t for t in server.tasks.all() if t.state == "queued"]
        log.info(
            "%s received: shutting down; running tasks (%d) get up to %s s, %d queued are cancelled",
            received[0],
            len(running),
            f"{grace:g}",
            len(queued),
        )
        finished, cancelled = server.shutdown(grace)
        for view in finished:
            log.info("finished: task %s (%s): %s", view.id, view.description, view.state)
        for view in cancelled:
            log.info(
                "cancelled: task %s (%s): %s%s",
                view.id,
                view.description,
                view.state,
                f" ({view.error})" if view.error else "",
            )
        log.info(
            "stopped: %s finished, %d cancelled", plural(len(finished), "task"), len(cancelled)
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.close()
