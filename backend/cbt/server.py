"""A real gRPC SnapshotMetadata server over the snapshots of a local cluster.

Behaves like the CSI hostpath driver: 4 KiB granularity, max_results 256 when the request
says 0, FIXED_LENGTH tuples by default (VARIABLE_LENGTH merges adjacent blocks). Results are
streamed while the images are scanned.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from lamina.protos import snapshotmetadata_pb2 as pb
from lamina.protos import snapshotmetadata_pb2_grpc as pb_grpc

from ..engine.extents import Range
from ..errors import LaminaError, UsageError
from ..local import LocalCluster, LocalSnapshot, SnapshotNotFound
from .scan import BLOCK_SIZE, allocated_runs, changed_runs

DEFAULT_MAX_RESULTS = 256
# A variable-length extent is closed at this size so that messages keep flowing on a volume
# that is one long run (a stream cut by the sidecar resumes from the last tuple received).
MAX_VARIABLE_EXTENT = 1024 * 1024 * 1024
# A partly filled message is sent once the scan has gone this long without sending one.
FLUSH_SECONDS = 1.0

BLOCK_TYPES = {"fixed": pb.FIXED_LENGTH, "variable": pb.VARIABLE_LENGTH}


class ServeError(LaminaError):
    """The SnapshotMetadata server cannot start as asked."""


ResponseT = TypeVar("ResponseT", pb.GetMetadataAllocatedResponse, pb.GetMetadataDeltaResponse)


def fixed_tuples(runs: Iterable[Range]) -> Iterator[Range]:
    for offset, length in runs:
        end = offset + length
        while offset < end:
            step = min(BLOCK_SIZE, end - offset)
            yield offset, step
            offset += step


def variable_tuples(
    runs: Iterable[Range], max_extent: int = MAX_VARIABLE_EXTENT
) -> Iterator[Range]:
    pending: Range | None = None
    for offset, length in runs:
        if pending is not None and pending[0] + pending[1] == offset:
            pending = (pending[0], pending[1] + length)
        else:
            if pending is not None:
                yield pending
            pending = (offset, length)
        while pending[1] > max_extent:
            yield pending[0], max_extent
            pending = (pending[0] + max_extent, pending[1] - max_extent)
    if pending is not None:
        yield pending


@dataclass
class ServerSettings:
    root: Path
    token: str | None = None
    block_type: str = "fixed"
    # Test knob: a stream that has sent this many messages and has more aborts with UNAVAILABLE.
    cut_after_messages: int | None = None
    # Statistics for reports and tests.
    streams_cut: int = 0
    messages_sent: int = 0
    bytes_scanned: int = 0  # volume bytes read and compared; holes of every file are skipped
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class LocalSnapshotMetadataServicer(pb_grpc.SnapshotMetadataServicer):
    """The two streaming RPCs of the SnapshotMetadata service over a LocalCluster."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.cluster = LocalCluster(settings.root)
        self.block_type = BLOCK_TYPES[settings.block_type]

    # ------------------------------------------------------------------ checks

    def _authorize(self, token: str, context: grpc.ServicerContext) -> None:
        expected = self.settings.token
        if expected is None:
            return
        if not hmac.compare_digest(token.encode(), expected.encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing security token")

    @staticmethod
    def _check_paging(starting_offset: int, max_results: int, context: grpc.ServicerContext) -> int:
        if starting_offset < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "starting_offset must not be negative")
        if max_results < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_results must not be negative")
        return max_results or DEFAULT_MAX_RESULTS

    def _snapshot(self, namespace: str, name: str, context: grpc.ServicerContext) -> LocalSnapshot:
        try:
            return self.cluster.snapshot(namespace, name)
        except SnapshotNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except UsageError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _snapshot_by_handle(self, handle: str, context: grpc.ServicerContext) -> LocalSnapshot:
        try:
            return self.cluster.snapshot_by_handle(handle)
        except SnapshotNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))

    @staticmethod
    def _check_offset(starting_offset: int, capacity: int, context: grpc.ServicerContext) -> None:
        if capacity > 0 and starting_offset >= capacity:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"starting_offset {starting_offset} is not below the volume capacity {capacity}",
            )

    # ------------------------------------------------------------------ streaming

    def _stream(
        self,
        make_response: Callable[[], ResponseT],
        runs: Iterable[Range],
        max_results: int,
        context: grpc.ServicerContext,
        *,
        empty_message: bool,
    ) -> Iterator[ResponseT]:
        tuples = fixed_tuples(runs) if self.block_type == pb.FIXED_LENGTH else variable_tuples(runs)
        sent = 0
        response = make_response()
        count = 0
        last_sent = time.monotonic()
        for offset, length in tuples:
            response.block_metadata.add(byte_offset=offset, size_bytes=length)
            count += 1
            if count >= max_results or time.monotonic() - last_sent >= FLUSH_SECONDS:
                self._before_message(sent, context)
                yield response
                sent += 1
                response = make_response()
                count = 0
                last_sent = time.monotonic()
        if count or (empty_message and not sent):
            self._before_message(sent, context)
            yield response

    def _count_scanned(self, nbytes: int) -> None:
        with self.settings.lock:
            self.settings.bytes_scanned += nbytes

    @staticmethod
    def _open_image(snap: LocalSnapshot, context: grpc.ServicerContext) -> int:
        try:
            return os.open(snap.image, os.O_RDONLY)
        except OSError as e:
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"cannot read the image of snapshot {snap.namespace}/{snap.name}: {e.strerror}",
            )

    def _before_message(self, sent: int, context: grpc.ServicerContext) -> None:
        settings = self.settings
        cut = settings.cut_after_messages
        if cut is not None and sent >= cut:
            with settings.lock:
                settings.streams_cut += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, f"stream cut after {sent} messages (test)")
        with settings.lock:
            settings.messages_sent += 1

    def GetMetadataAllocated(
        self, request: pb.GetMetadataAllocatedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetMetadataAllocatedResponse]:
        self._authorize(request.security_token, context)
        if not request.namespace or not request.snapshot_name:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "namespace and snapshot_name are required"
            )
        max_results = self._check_paging(request.starting_offset, request.max_results, context)
        snap = self._snapshot(request.namespace, request.snapshot_name, context)
        capacity = snap.size
        self._check_offset(request.starting_offset, capacity, context)
        block_type = self.block_type

        def make() -> pb.GetMetadataAllocatedResponse:
            return pb.GetMetadataAllocatedResponse(
                block_metadata_type=block_type, volume_capacity_bytes=capacity
            )

        fd = self._open_image(snap, context)
        try:
            runs = allocated_runs(
                fd,
                capacity,
                request.starting_offset,
                file_size=os.fstat(fd).st_size,
                cancelled=lambda: not context.is_active(),
                scanned=self._count_scanned,
            )
            yield from self._stream(make, runs, max_results, context, empty_message=True)
        finally:
            os.close(fd)

    def GetMetadataDelta(
        self, request: pb.GetMetadataDeltaRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetMetadataDeltaResponse]:
        self._authorize(request.security_token, context)
        if (
            not request.namespace
            or not request.base_snapshot_id
            or not request.target_snapshot_name
        ):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "namespace, base_snapshot_id and target_snapshot_name are required",
            )
        max_results = self._check_paging(request.starting_offset, request.max_results, context)
        target = self._snapshot(request.namespace, request.target_snapshot_name, context)
        base = self._snapshot_by_handle(request.base_snapshot_id, context)
        if base.source != target.source:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"base snapshot {base.namespace}/{base.name} and target {target.namespace}/"
                f"{target.name} are snapshots of different volumes",
            )
        capacity = target.size
        self._check_offset(request.starting_offset, capacity, context)
        block_type = self.block_type

        def make() -> pb.GetMetadataDeltaResponse:
            return pb.GetMetadataDeltaResponse(
                block_metadata_type=block_type, volume_capacity_bytes=capacity
            )

        base_fd = self._open_image(base, context)
        try:
            target_fd = self._open_image(target, context)
            try:
                runs = changed_runs(
                    base_fd,
                    os.fstat(base_fd).st_size,
                    target_fd,
                    os.fstat(target_fd).st_size,
                    capacity,
                    request.starting_offset,
                    cancelled=lambda: not context.is_active(),
                    scanned=self._count_scanned,
                )
                # No change: no message at all, as real drivers may do.
                yield from self._stream(make, runs, max_results, context, empty_message=False)
            finally:
                os.close(target_fd)
        finally:
            os.close(base_fd)


@dataclass
class RunningServer:
    """A SnapshotMetadata server started in this process."""

    server: grpc.Server
    port: int
    address: str
    settings: ServerSettings
    tls: bool

    def stop(self, grace: float | None = 0.5) -> None:
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    root: str | Path,
    listen: str = "127.0.0.1:0",
    *,
    token: str | None = None,
    tls_cert_pem: bytes | None = None,
    tls_key_pem: bytes | None = None,
    block_type: str = "fixed",
    cut_after_messages: int | None = None,
    max_workers: int = 8,
) -> RunningServer:
    """Serve the snapshots under ``root`` on ``listen`` (HOST:PORT; port 0 picks a free one)."""
    if block_type not in BLOCK_TYPES:
        raise UsageError(f"block type must be fixed or variable, not {block_type!r}")
    if (tls_cert_pem is None) != (tls_key_pem is None):
        raise UsageError("TLS needs both a certificate and its key")
    if cut_after_messages is not None and cut_after_messages < 1:
        raise UsageError("cut_after_messages must be at least 1")
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UsageError(
            f"not a listen address: {listen!r} (use HOST:PORT, for example 127.0.0.1:0)"
        )
    settings = ServerSettings(
        root=Path(root), token=token, block_type=block_type, cut_after_messages=cut_after_messages
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lamina-cbt"),
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_SnapshotMetadataServicer_to_server(LocalSnapshotMetadataServicer(settings), server)
    try:
        if tls_cert_pem is not None and tls_key_pem is not None:
            credentials = grpc.ssl_server_credentials([(tls_key_pem, tls_cert_pem)])
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as e:
        raise ServeError(f"cannot listen on {listen}: {e}") from None
    if port == 0:
        raise ServeError(f"cannot listen on {listen}")
    server.start()
    return RunningServer(
        server=server,
        port=port,
        address=f"{host}:{port}",
        settings=settings,
        tls=tls_cert_pem is not None,
    )
