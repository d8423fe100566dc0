"""Reads from the image: metadata through a small LRU of aligned chunks, file data in big reads.

Every read may be a remote fetch, so metadata is read in whole 64 KiB chunks and kept, and
file contents are read in large pieces that bypass the cache (so they do not evict metadata).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .api import ReadAt
from .errors import CorruptFilesystem, FsReadError

CHUNK = 64 * 1024
DEFAULT_CHUNKS = 512  # 32 MiB of metadata
MAX_DATA_READ = 4 * 1024 * 1024


class BlockReader:
    """Bounds-checked reads from a ``ReadAt``; thread-safe."""

    def __init__(self, image: ReadAt, *, fs_size: int = 0, chunks: int = DEFAULT_CHUNKS) -> None:
        self.image = image
        self.size = int(image.size)
        self.fs_size = fs_size  # bytes the filesystem claims, for truncation messages
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._capacity = max(chunks, 4)
        self.capacity = self._capacity
        self._lock = threading.Lock()
        self.fetches = 0  # chunk reads that missed the cache, for tests and tuning

    def _raw(self, length: int, offset: int) -> bytes:
        try:
            return self.image.pread(length, offset)
        except OSError as e:
            raise FsReadError(f"cannot read the image at byte {offset}: {e.strerror or e}") from e

    def _beyond_end(self, offset: int, length: int, what: str) -> CorruptFilesystem:
        detail = f"{what} at byte {offset} (+{length}) lies beyond the end of the image ({self.size} bytes)"
        if self.fs_size > self.size:
            detail += f"; the filesystem claims {self.fs_size} bytes, so the image is truncated"
        return CorruptFilesystem(detail)

    def _short(self, offset: int, length: int, got: int, what: str) -> CorruptFilesystem:
        return CorruptFilesystem(
            f"{what}: the image returned {got} of {length} bytes at byte {offset}, "
            f"though it claims to hold {self.size} bytes"
        )

    def _chunk(self, index: int, readahead: int = 1) -> bytes:
        with self._lock:
            data = self._chunks.get(index)
            if data is not None:
                self._chunks.move_to_end(index)
                return data
        # A miss: fetch this chunk and the next ``readahead - 1`` ones in one request.
        offset = index * CHUNK
        count = max(1, min(readahead, self._capacity // 4, -(-(self.size - offset) // CHUNK)))
        data = self._raw(min(count * CHUNK, self.size - offset), offset)
        with self._lock:
            self.fetches += 1
            for i in range(count):
                piece = data[i * CHUNK : (i + 1) * CHUNK]
                if i and (not piece or index + i in self._chunks):
                    break
                self._chunks[index + i] = piece
                self._chunks.move_to_end(index + i)
            while len(self._chunks) > self._capacity:
                self._chunks.popitem(last=False)
        return data[:CHUNK]

    def meta(
        self, offset: int, length: int, what: str = "metadata", *, readahead: int = 1
    ) -> bytes:
        """Exactly ``length`` bytes at ``offset``, through the cache.

        On a miss, ``readahead`` chunks are fetched in one request: for structures that are
        read in order, such as indirect blocks lying between the data they map.
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self._beyond_end(offset, length, what)
        if length == 0:
            return b""
        first, last = offset // CHUNK, (offset + length - 1) // CHUNK
        start = offset - first * CHUNK
        if first == last:
            piece = self._chunk(first, readahead)[start : start + length]
        else:
            parts = [self._chunk(i, max(readahead, last - i + 1)) for i in range(first, last + 1)]
            piece = b"".join(parts)[start : start + length]
        if len(piece) != length:  # the image returned less than its size promised
            raise self._short(offset, length, len(piece), what)
        return piece

    def data_into(self, out: memoryview, offset: int, what: str = "file data") -> None:
        """Fill ``out`` from ``offset`` with direct reads of at most MAX_DATA_READ bytes."""
        length = len(out)
        if offset < 0 or offset + length > self.size:
            raise self._beyond_end(offset, length, what)
        done = 0
        while done < length:
            want = min(MAX_DATA_READ, length - done)
            piece = self._raw(want, offset + done)
            if len(piece) != want:
                raise self._short(offset + done, want, len(piece), what)
            out[done : done + want] = piece
            done += want
