"""The small storage interface: put (optionally if absent), get, ranged get, head, list, delete."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import LaminaError


class StorageError(LaminaError):
    """A storage operation failed for a reason other than a missing object."""


class InvalidRequest(StorageError):
    """The request itself is wrong (a bad key or range): asking again cannot help."""


class ObjectNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ShortRead(StorageError):
    """An object ended before the requested range did: it is truncated."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch
    # Changes whenever the key is written again (S3's ETag; inode, size and mtime in ns on a
    # local folder). Filled by ``list()``; "" where a backend does not know one.
    etag: str = ""


class Storage(ABC):
    """One place that holds objects. Keys are relative, slash-separated, never start with '/'."""

    #: A URL that names this storage, for messages.
    url: str = ""
    #: True when the backend counts its own requests for the job's meter (storage/metering.py).
    meters_itself: bool = False

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        """Store ``data`` under ``key`` atomically.

        With ``if_absent``, an existing object is left alone and False is returned
        (RetryingStorage returns True when that object is byte-identical to ``data``: a
        retried write meeting its own first attempt).
        ``retain_until`` (seconds since the epoch) asks for S3 Object Lock retention; backends
        without it refuse the request.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object. Raises ObjectNotFound."""

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``. Raises ObjectNotFound; a short object is an error."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and time of an object, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``; the order is unspecified."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object. Deleting a missing object is not an error."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def check_key(key: str) -> None:
    """Keys are relative, slash-separated paths without empty, '.' or '..' parts."""
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise InvalidRequest(f"invalid object key: {key!r}")


def check_prefix(prefix: str) -> None:
    """A list prefix: its complete parts (before the last slash) must be valid key parts."""
    folder, slash, _ = prefix.rpartition("/")
    try:
        if slash:
            check_key(folder)
        if "\\" in prefix:
            raise InvalidRequest("backslash")
    except InvalidRequest:
        raise InvalidRequest(f"invalid list prefix: {prefix!r}") from None


def check_span(key: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidRequest(f"invalid range of {key}: offset {offset}, length {length}")


def check_range(key: str, data: bytes, offset: int, length: int) -> bytes:
    if len(data) != length:
        raise ShortRead(
            f"short read of {key}: wanted {length} bytes at offset {offset}, got {len(data)}"
        )
    return data
