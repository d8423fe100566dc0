"""In-memory storage, for tests."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

from .base import (
    InvalidRequest,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    check_key,
    check_prefix,
    check_range,
    check_span,
)


class MemoryStorage(Storage):
    def __init__(self, url: str = "mem://") -> None:
        self.url = url
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        if retain_until is not None:
            raise InvalidRequest("Object Lock retention needs an S3 repository")
        check_key(key)
        with self._lock:
            if if_absent and key in self._objects:
                return False
            self._objects[key] = (bytes(data), time.time())
            return True

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._objects[key][0]
            except KeyError:
                raise ObjectNotFound(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_span(key, offset, length)
        data = self.get(key)
        return check_range(key, data[offset : offset + length], offset, length)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with self._lock:
            entry = self._objects.get(key)
        return None if entry is None else ObjectInfo(key, len(entry[0]), entry[1])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with self._lock:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, (data, mtime) in items:
            yield ObjectInfo(key, len(data), mtime, hashlib.md5(data).hexdigest())

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)
