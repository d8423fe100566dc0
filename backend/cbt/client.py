"""A client of the CSI SnapshotMetadata service (Kubernetes changed-block tracking).

It streams GetMetadataAllocated and GetMetadataDelta and yields byte extents as messages
arrive, checking every tuple on the way: a stream that is out of order, overlapping, of
zero-sized or out-of-bounds tuples, or whose block type or capacity changes, fails with
ChangedRangesError, so that no backup is ever built on ranges that cannot be trusted.
A stream cut by the server (UNAVAILABLE and kin) resumes from the end of the last tuple.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from lamina.protos import snapshotmetadata_pb2 as pb
from lamina.protos import snapshotmetadata_pb2_grpc as pb_grpc

from ..engine.extents import Range
from ..errors import ChangedRangesError, LaminaError, UsageError

BLOCK_TYPE_NAMES: dict[int, str] = {
    pb.FIXED_LENGTH: "FIXED_LENGTH",
    pb.VARIABLE_LENGTH: "VARIABLE_LENGTH",
}
# Codes that mean "the stream or the connection broke": resume from the last tuple.
RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SnapshotMetadataError(LaminaError):
    """The SnapshotMetadata service refused a request or could not be reached."""


@dataclass(frozen=True)
class MetadataMessage:
    """One response message, checked; extents after a resume may be clipped to the resume point."""

    block_type: str
    capacity: int
    extents: tuple[Range, ...]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


Response = pb.GetMetadataAllocatedResponse | pb.GetMetadataDeltaResponse
Opener = Callable[[int], Iterator[Response]]


class MetadataStream:
    """The extents of one GetMetadataAllocated or GetMetadataDelta request, resumed as needed.

    Iterating yields ``(offset, length)``; ``messages()`` yields whole checked messages.
    Each iteration opens a new call. ``capacity`` and ``block_type`` tell what the stream said
    (the capacity falls back to ``capacity_hint`` when no message arrived).
    """

    def __init__(
        self,
        rpc: str,
        address: str,
        opener: Opener,
        *,
        starting_offset: int,
        capacity_hint: int | None,
        max_retries: int,
        retry_delay: float,
    ) -> None:
        self.rpc = rpc
        self.address = address
        self._open = opener
        self.starting_offset = starting_offset
        self.capacity_hint = capacity_hint
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.capacity: int | None = None
        self.block_type: str | None = None
        self.messages_received = 0
        self.tuples_received = 0
        self.resumes = 0

    def __iter__(self) -> Iterator[Range]:
        for message in self.messages():
            yield from message.extents

    def _fail(self, detail: str) -> ChangedRangesError:
        return ChangedRangesError(f"{self.rpc} stream from {self.address}: {detail}")

    def messages(self) -> Iterator[MetadataMessage]:
        self.capacity = None
        self.block_type = None
        self.messages_received = self.tuples_received = self.resumes = 0
        fixed_size: int | None = None
        last_offset = -1
        last_end: int | None = None
        position = self.starting_offset
        failures = 0
        resumed = False
        while True:
            call = self._open(position)
            first_of_call = True
            try:
                for response in call:
                    message, fixed_size, last_offset, last_end = self._check(
                        response, fixed_size, last_offset, last_end, resumed and first_of_call
                    )
                    if message.extents:
                        first_of_call = False
                        failures = 0
                    yield message
                if self.capacity is None:
                    self.capacity = self.capacity_hint
                return
            except grpc.RpcError as e:
                code, details = _status(e)
                if last_end is not None and self.capacity is not None and last_end >= self.capacity:
                    return  # everything arrived; only the end of the stream was lost
                if not _retryable(code, details) or failures >= self.max_retries:
                    raise self._rpc_error(code, details, failures + 1) from None
                failures += 1
                time.sleep(min(2.0, self.retry_delay * 2 ** (failures - 1)))
                if last_end is not None:
                    position = last_end
                resumed = True
                self.resumes += 1
            finally:
                cancel = getattr(call, "cancel", None)
                if cancel is not None:
                    cancel()

    def _check(
        self,
        response: Response,
        fixed_size: int | None,
        last_offset: int,
        last_end: int | None,
        may_clip: bool,
    ) -> tuple[MetadataMessage, int | None, int, int | None]:
        type_value = int(response.block_metadata_type)
        if type_value not in BLOCK_TYPE_NAMES:
            name = "UNKNOWN" if type_value == pb.UNKNOWN else f"unknown value {type_value}"
            raise self._fail(f"block metadata type is {name}")
        block_type = BLOCK_TYPE_NAMES[type_value]
        if self.block_type is None:
            self.block_type = block_type
        elif block_type != self.block_type:
            raise self._fail(f"block metadata type changed from {self.block_type} to {block_type}")
        capacity = int(response.volume_capacity_bytes)
        if capacity <= 0:
            raise self._fail(f"volume capacity {capacity} is not positive")
        if self.capacity is None:
            self.capacity = capacity
        elif capacity != self.capacity:
            raise self._fail(f"volume capacity changed from {self.capacity} to {capacity}")
        self.messages_received += 1
        extents: list[Range] = []
        for block in response.block_metadata:
            offset, size = int(block.byte_offset), int(block.size_bytes)
            self.tuples_received += 1
            if size <= 0:
                raise self._fail(f"tuple at offset {offset} has size {size} (must be > 0)")
            if offset < 0:
                raise self._fail(f"tuple has negative offset {offset}")
            if offset + size > capacity:
                raise self._fail(
                    f"tuple {offset}+{size} goes beyond the volume capacity {capacity}"
                )
            clipped = False
            if last_end is not None and offset < last_end:
                if may_clip and not extents and offset + size > last_end:
                    # A resumed stream may start with the tuple holding the resume point.
                    size -= last_end - offset
                    offset = last_end
                    clipped = True
                elif offset <= last_offset:
                    raise self._fail(
                        f"tuple at offset {offset} is out of order (previous tuple at {last_offset})"
                    )
                else:
                    raise self._fail(
                        f"tuple {offset}+{size} overlaps the previous tuple (which ends at {last_end})"
                    )
            if block_type == "FIXED_LENGTH" and not clipped:
                if fixed_size is None:
                    fixed_size = size
                elif size != fixed_size and offset + size != capacity:
                    raise self._fail(
                        f"FIXED_LENGTH tuple at offset {offset} has size {size}, not {fixed_size}"
                    )
            extents.append((offset, size))
            last_offset, last_end = offset, offset + size
        return (
            MetadataMessage(block_type, capacity, tuple(extents)),
            fixed_size,
            last_offset,
            last_end,
        )

    def _rpc_error(
        self, code: grpc.StatusCode, details: str, attempts: int
    ) -> SnapshotMetadataError:
        where = f"SnapshotMetadata service at {self.address}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return SnapshotMetadataError(f"{where} refused the security token: {details}")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return SnapshotMetadataError(f"{where} denied access: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return SnapshotMetadataError(f"{where}: not found: {details}")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            return SnapshotMetadataError(f"{where} rejected the {self.rpc} request: {details}")
        if code in RETRYABLE_CODES:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            return SnapshotMetadataError(
                f"{self.rpc} at {self.address} failed{tries}: {code.name}: {details}"
            )
        return SnapshotMetadataError(f"{self.rpc} at {self.address} failed: {code.name}: {details}")


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    status = code() if callable(code) else grpc.StatusCode.UNKNOWN
    text = details() if callable(details) else str(error)
    return status, _one_line(str(text or "no details"))


def _retryable(code: grpc.StatusCode, details: str) -> bool:
    if code == grpc.StatusCode.INTERNAL:
        return "RST_STREAM" in details  # the connection was reset in the middle of a stream
    if code == grpc.StatusCode.UNAVAILABLE and "handshake" in details.lower():
        return False  # a TLS problem: trying again cannot help
    return code in RETRYABLE_CODES


class SnapshotMetadataClient:
    """A connection to one SnapshotMetadata service.

    ``ca_pem`` (PEM bytes) turns TLS on and is the only trusted root; ``tls_server_name``
    overrides the name checked in the server certificate. ``token`` is sent in every request.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str = "",
        ca_pem: bytes | None = None,
        tls_server_name: str | None = None,
        max_retries: int = 5,
        retry_delay: float = 0.2,
    ) -> None:
        if not address or ":" not in address:
            raise UsageError(f"not a service address: {address!r} (use HOST:PORT)")
        if max_retries < 0:
            raise UsageError("max_retries must not be negative")
        self.address = address
        self.token = token
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if ca_pem is not None:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.SnapshotMetadataStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SnapshotMetadataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_paging(starting_offset: int, max_results: int) -> None:
        if starting_offset < 0:
            raise UsageError(f"starting offset must not be negative, not {starting_offset}")
        if not 0 <= max_results <= 2**31 - 1:
            raise UsageError(f"max results must be between 0 and 2147483647, not {max_results}")

    def allocated(
        self,
        namespace: str,
        snapshot: str,
        *,
        starting_offset: int = 0,
        max_results: int = 0,
        capacity_hint: int | None = None,
    ) -> MetadataStream:
        """The allocated blocks of the VolumeSnapshot ``namespace/snapshot``."""
        self._check_paging(starting_offset, max_results)

        def open_call(position: int) -> Iterator[Response]:
            request = pb.GetMetadataAllocatedRequest(
                security_token=self.token,
                namespace=namespace,
                snapshot_name=snapshot,
                starting_offset=position,
                max_results=max_results,
            )
            return self._stub.GetMetadataAllocated(request)

        return self._stream("GetMetadataAllocated", open_call, starting_offset, capacity_hint)

    def delta(
        self,
        namespace: str,
        base_snapshot_id: str,
        target_snapshot: str,
        *,
        starting_offset: int = 0,
        max_results: int = 0,
        capacity_hint: int | None = None,
    ) -> MetadataStream:
        """The blocks changed from the snapshot with handle ``base_snapshot_id`` to the
        VolumeSnapshot ``namespace/target_snapshot``."""
        self._check_paging(starting_offset, max_results)

        def open_call(position: int) -> Iterator[Response]:
            request = pb.GetMetadataDeltaRequest(
                security_token=self.token,
                namespace=namespace,
                base_snapshot_id=base_snapshot_id,
                target_snapshot_name=target_snapshot,
                starting_offset=position,
                max_results=max_results,
            )
            return self._stub.GetMetadataDelta(request)

        return self._stream("GetMetadataDelta", open_call, starting_offset, capacity_hint)

    def _stream(
        self, rpc: str, opener: Opener, starting_offset: int, capacity_hint: int | None
    ) -> MetadataStream:
        return MetadataStream(
            rpc,
            self.address,
            opener,
            starting_offset=starting_offset,
            capacity_hint=capacity_hint,
            max_retries=self.max_retries,
            retry_delay=self.retry_delay,
        )
