"""Wrappers that add behaviour to any backend: retries and request counting."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ...errors import StorageUnavailable
from . import metering
from .base import InvalidRequest, ObjectInfo, ObjectNotFound, ShortRead, Storage, StorageError

T = TypeVar("T")


class RetryingStorage(Storage):
    """Retries transient failures with exponential backoff and jitter.

    A missing or truncated object is an answer, not a failure, and a wrong request (bad key
    or range) fails the same way every time: none of these is retried.
    """

    def __init__(self, inner: Storage, *, attempts: int = 4, base_delay: float = 0.2) -> None:
        self.inner = inner
        self.url = inner.url
        self.meters_itself = inner.meters_itself
        self.attempts = attempts
        self.base_delay = base_delay

    def _retry(self, op: Callable[[], T], name: str) -> T:
        for attempt in range(self.attempts):
            if attempt:
                # A backend that meters itself counts the new request; count it here otherwise.
                metering.record("" if self.meters_itself else name, retry=True)
            try:
                return op()
            except (ObjectNotFound, ShortRead, InvalidRequest):
                raise
            except (StorageError, StorageUnavailable):
                if attempt == self.attempts - 1:
                    raise
                time.sleep(self.base_delay * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        written = self._retry(
            lambda: self.inner.put(key, data, if_absent=if_absent, retain_until=retain_until),
            "put",
        )
        if written or not if_absent:
            return written
        # An attempt whose answer was lost (a 500 after the write, a reset; ours or the
        # client library's own retry) makes the next one meet our own object: that is
        # success. Only an object with other content is a real conflict.
        try:
            return bool(self._retry(lambda: self.inner.get(key), "get") == bytes(data))
        except ObjectNotFound:
            return False

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.inner.get(key), "get")

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retry(lambda: self.inner.get_range(key, offset, length), "get")

    def head(self, key: str) -> ObjectInfo | None:
        return self._retry(lambda: self.inner.head(key), "head")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._retry(lambda: list(self.inner.list(prefix)), "list"))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key), "delete")

    def close(self) -> None:
        self.inner.close()


class CountingStorage(Storage):
    """Counts requests and bytes, for the statistics of every job; and, for a backend that
    does not meter itself, adds each call to the meters of the job making it."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self.meters_itself = True  # here, or below
        self._meter = not inner.meters_itself
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def _count(self, up: int = 0, op: str = "") -> None:
        with self._lock:
            self.requests += 1
            self.bytes_up += up
        if self._meter:
            metering.record(op, up=up)

    def _count_down(self, size: int) -> None:
        with self._lock:
            self.bytes_down += size
        if self._meter:
            metering.record("", down=size)

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        self._count(up=len(data), op="put")
        return self.inner.put(key, data, if_absent=if_absent, retain_until=retain_until)

    # A request counts whether or not it succeeds; bytes count once they arrived.
    def get(self, key: str) -> bytes:
        self._count(op="get")
        data = self.inner.get(key)
        self._count_down(len(data))
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._count(op="get")
        data = self.inner.get_range(key, offset, length)
        self._count_down(len(data))
        return data

    def head(self, key: str) -> ObjectInfo | None:
        self._count(op="head")
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count(op="list")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._count(op="delete")
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
