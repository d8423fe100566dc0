"""Random access to the volume of a restore point, fetched lazily through its chain.

This is what a FUSE mount, the file browser and file extraction read from: no restore
needed. The resolved extent map is built once. Whole pieces are fetched with ranged GETs
(neighbours in one pack share a GET), decompressed pieces are kept in a bounded LRU cache,
and sequential reads trigger parallel read-ahead. Unallocated and zero ranges read as zeros
without any request.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from ..errors import LaminaError
from .format import EXTENT_DATA, Extent, PieceEntry
from .repository import Point, Repository, pack_runs
from .storage.metering import ContextThreadPool

log = logging.getLogger("lamina.image")

DEFAULT_CACHE = 512 * 1024 * 1024
DEFAULT_READAHEAD = 32 * 1024 * 1024


class ImageReadError(LaminaError):
    """A range of the volume cannot be read (a corrupt or missing piece)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class ImageReader:
    """``pread(length, offset)`` over a point's volume. Thread-safe."""

    def __init__(
        self,
        repo: Repository,
        point: Point,
        *,
        cache_bytes: int = DEFAULT_CACHE,
        readahead_bytes: int = DEFAULT_READAHEAD,
        threads: int = 8,
    ) -> None:
        self.repo = repo
        self.point = point
        self.size = point.capacity
        resolved = repo.resolve(point)
        self._data: list[Extent] = [e for e in resolved if e.kind == EXTENT_DATA]
        self._starts = [e.offset for e in self._data]
        repo.load_index()
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_bytes = 0
        self.cache_limit = max(cache_bytes, 0)
        self.readahead_bytes = readahead_bytes
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._pool = ContextThreadPool(threads, thread_name_prefix="lamina-image")
        self._last_end = -1
        self._prefetched_to = 0
        self.fetches = 0
        self.cache_hits = 0
        self._on_close: list[Callable[[], None]] = []

    def data_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of every range that holds data; the rest reads as zeros."""
        return [(e.offset, e.length) for e in self._data]

    @property
    def allocated_bytes(self) -> int:
        return sum(e.length for e in self._data)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the reader is closed (releases its repository lock)."""
        self._on_close.append(callback)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def pread(self, length: int, offset: int) -> bytes:
        """``length`` bytes at ``offset`` (short only at the end of the volume)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        first = max(0, bisect.bisect_right(self._starts, offset) - 1)
        needed: list[Extent] = []
        i = first
        while i < len(self._data) and self._data[i].offset < end:
            e = self._data[i]
            if e.offset + e.length > offset:
                needed.append(e)
            i += 1
        sequential = offset == self._last_end
        if not sequential:
            self._prefetched_to = 0  # a seek: read-ahead starts over from here
        self._last_end = end
        futures = [(e, self._fetch(e)) for e in needed]
        if sequential or offset == 0:
            self._read_ahead(i, end)
        for e, future in futures:
            try:
                piece = future.result()
            except LaminaError as err:
                at = max(e.offset, offset)
                log.error("cannot read volume offset %d of point %s: %s", at, self.point.id, err)
                raise ImageReadError(f"{err} (volume offset {at})", at) from None
            lo, hi = max(e.offset, offset), min(e.offset + e.length, end)
            src = e.piece_offset + (lo - e.offset)
            out[lo - offset : hi - offset] = piece[src : src + (hi - lo)]
        return bytes(out)

    def _read_ahead(self, next_index: int, end: int) -> None:
        """Fetch the pieces after ``end`` in parallel, up to ``readahead_bytes`` ahead."""
        if self.readahead_bytes <= 0:
            return
        limit = end + self.readahead_bytes
        start = max(end, self._prefetched_to)
        i = max(next_index, bisect.bisect_right(self._starts, start) - 1, 0)
        batch: list[Extent] = []
        while i < len(self._data) and self._data[i].offset < limit:
            e = self._data[i]
            if e.offset + e.length > start:
                batch.append(e)
            i += 1
        if batch:
            self._prefetched_to = max(
                self._prefetched_to, min(limit, batch[-1].offset + batch[-1].length)
            )
            self._prefetch(batch)

    def _prefetch(self, extents: Sequence[Extent]) -> None:
        """Start fetches for pieces not cached or in flight, neighbours in a pack together."""
        entries: list[PieceEntry] = []
        with self._lock:
            seen: set[bytes] = set()
            for e in extents:
                pid = e.piece_id
                if pid in self._cache or pid in self._inflight or pid in seen:
                    continue
                entry = self.repo.index.get(pid)
                if entry is None:
                    continue  # the error surfaces when the range is really read
                seen.add(pid)
                entries.append(entry)
            runs = pack_runs(entries)
            for run in runs:
                futures = [Future[bytes]() for _ in run]
                for entry, f in zip(run, futures, strict=True):
                    self._inflight[entry.piece_id] = f
                self._pool.submit(self._load_run, run, futures)

    def _fetch(self, e: Extent) -> Future[bytes]:
        pid = e.piece_id
        with self._lock:
            data = self._cache.get(pid)
            if data is not None:
                self._cache.move_to_end(pid)
                self.cache_hits += 1
                done: Future[bytes] = Future()
                done.set_result(data)
                return done
            future = self._inflight.get(pid)
            if future is not None:
                return future
            future = Future()
            self._inflight[pid] = future
        entry = self.repo.find_piece(pid)
        if entry is None:
            self._settle(
                pid, future, None, LaminaError(f"piece {pid.hex()[:16]} is not in the repository")
            )
        else:
            self._pool.submit(self._load_run, [entry], [future])
        return future

    def _load_run(self, run: list[PieceEntry], futures: list[Future[bytes]]) -> None:
        try:
            results = self.repo.read_pack_run(run)
        except Exception as e:  # storage failure: every piece of the run fails alike
            err = e if isinstance(e, LaminaError) else LaminaError(f"read failed: {e}")
            results = [err] * len(run)
        self.fetches += 1
        for entry, future, result in zip(run, futures, results, strict=True):
            if isinstance(result, LaminaError):
                self._settle(entry.piece_id, future, None, result)
            else:
                self._settle(entry.piece_id, future, result, None)

    def _settle(
        self, pid: bytes, future: Future[bytes], data: bytes | None, error: LaminaError | None
    ) -> None:
        with self._lock:
            self._inflight.pop(pid, None)
            if data is not None and self.cache_limit:
                if pid not in self._cache:
                    self._cache[pid] = data
                    self._cache_bytes += len(data)
                while self._cache_bytes > self.cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= len(old)
        if error is not None:
            future.set_exception(error)
        else:
            assert data is not None
            future.set_result(data)
