"""What every part of ``Repository`` shares: its storage, sealer, settings and caches."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import CorruptObject
from ..cache import ObjectCache
from ..crypto import Sealer
from ..fingerprints import Fingerprinter
from ..format import Extent
from ..storage import Storage
from ..storage.metering import ContextThreadPool

T = TypeVar("T")

if TYPE_CHECKING:
    from .codec import PieceCodec
    from .index import PieceIndex
    from .points import Point


class RepositoryState:
    """The state the parts of ``Repository`` (index, packs, points) work on; set up by
    ``Repository.__init__``."""

    raw_storage: Storage
    storage: Storage
    config: dict[str, Any]
    sealer: Sealer
    codec: PieceCodec
    grid_size: int
    pack_size: int
    zstd_level: int
    fingerprint_block: int
    fingerprinter: Fingerprinter | None
    index: PieceIndex
    io_threads: int
    _segments: set[str]
    _last_refresh: float
    _index_loaded: bool
    _index_lock: threading.Lock
    _points: dict[str, Point]
    _generation: str | None  # the generation the point cache belongs to
    _maps: OrderedDict[str, list[Extent]]
    _maps_extents: int
    _cache_lock: threading.Lock
    cache: ObjectCache | None  # the local cache of this repository (cache.py), if any
    _shared_locks: int  # shared locks this process holds: no deleter runs meanwhile

    # ------------------------------------------------------------------ object lock

    @property
    def retention_days(self) -> int:
        lock = self.config.get("object_lock") or {}
        return int(lock.get("days", 0))

    def retention_of(self, written: float) -> float:
        """Until when an object written at ``written`` is locked (0: never)."""
        days = self.retention_days
        return written + days * 86400 if days else 0.0

    def put_retained(self, key: str, data: bytes | bytearray, *, if_absent: bool = True) -> bool:
        """Write a data or metadata object, under Object Lock retention when configured."""
        days = self.retention_days
        until = time.time() + days * 86400 if days else None
        return self.storage.put(key, data, if_absent=if_absent, retain_until=until)

    # ------------------------------------------------------------------ local cache

    def fetch_checked(
        self,
        key: str,
        decode: Callable[[bytes], T],
        tag: str | None = "",
        *,
        keep: bool = True,
    ) -> T:
        """``decode`` of the object at ``key``: from the local cache when its copy decodes
        (the same checks as a fresh download), else from the repository, then cached.

        Callers decide whether ``key`` may come from the cache at all (docs/format.md,
        "Local cache"); ``tag`` is the generation a manifest is valid under (None: do not
        look in the cache), and ``keep`` whether a fresh download may be cached. A missing
        object raises ``ObjectNotFound``; a corrupt download raises and is not cached.
        """
        cache = self.cache
        if cache is not None and tag is not None:
            blob = cache.get(key, tag)
            if blob is not None:
                try:
                    return decode(blob)
                except CorruptObject:  # damaged on disk: ignore it and replace it
                    cache.rejected += 1
                    cache.discard(key)
        blob = self.storage.get(key)
        value = decode(blob)
        if cache is not None and tag is not None and keep:
            cache.put(key, blob, tag)
        return value

    def cache_put(self, key: str, blob: bytes | bytearray, tag: str = "") -> None:
        """Keep a copy of an object this process wrote itself."""
        if self.cache is not None:
            self.cache.put(key, blob, tag)

    def lock_granted(self) -> None:
        """A shared lock of this process was granted (and the caches revalidated)."""
        with self._cache_lock:
            self._shared_locks += 1

    def lock_released(self) -> None:
        with self._cache_lock:
            self._shared_locks -= 1

    def manifest_tag(self) -> str | None:
        """The generation under which manifests may go to and come from the local cache:
        only while this process holds a shared lock, so that no deleter runs while they are
        read (a deleter bumps the generation first, which retires every cached manifest)."""
        with self._cache_lock:
            if self.cache is None or self._shared_locks <= 0 or self._generation is None:
                return None
            return self._generation

    # ------------------------------------------------------------------ helpers

    def _parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ContextThreadPool(min(self.io_threads, len(items))) as pool:
            return list(pool.map(fn, items))
