"""What every part of ``Repository`` shares: its storage, sealer, settings and caches."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..crypto import Sealer
from ..fingerprints import Fingerprinter
from ..format import Extent
from ..storage import Storage

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

    # ------------------------------------------------------------------ helpers

    def _parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(self.io_threads, len(items))) as pool:
            return list(pool.map(fn, items))
