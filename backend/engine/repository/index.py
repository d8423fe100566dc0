"""The piece index: where every piece lives, loaded from the index segments.

``PieceIndex`` is the compact in-memory table; ``IndexStore`` loads it from the segments
(``index/<segment-id>``), follows segments other processes add, and writes new ones.
"""

from __future__ import annotations

import bisect
import secrets
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence

from .. import format as fmt
from ..crypto import ID_SIZE
from ..format import PieceEntry
from .base import RepositoryState


class PieceIndex:
    """Sorted, compact map of piece id -> location: about 50 bytes a piece in memory."""

    def __init__(self) -> None:
        self._ids = bytearray()
        self._pack_no = array("I")
        self._offset = array("I")
        self._stored = array("I")
        self._raw = array("I")
        self._codec = array("B")
        self._packs: list[bytes] = []
        self._recent: dict[bytes, PieceEntry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pack_no) + len(self._recent)

    def build(self, entries: Iterable[PieceEntry]) -> None:
        """Replace the table with ``entries`` (which may repeat pieces)."""
        self._ids = bytearray()
        self._pack_no = array("I")
        self._offset = array("I")
        self._stored = array("I")
        self._raw = array("I")
        self._codec = array("B")
        with self._lock:
            self._recent = {}
        pack_numbers: dict[bytes, int] = {}
        rows = sorted(
            (
                e.piece_id,
                pack_numbers.setdefault(e.pack_id, len(pack_numbers)),
                e.offset,
                e.stored_size,
                e.raw_size,
                e.codec,
            )
            for e in entries
        )
        self._packs = [b""] * len(pack_numbers)
        for pack_id, no in pack_numbers.items():
            self._packs[no] = pack_id
        last = b""
        for piece_id, no, offset, stored, raw, codec in rows:
            if piece_id == last:
                continue  # the same piece in two packs: either copy will do
            last = piece_id
            self._ids += piece_id
            self._pack_no.append(no)
            self._offset.append(offset)
            self._stored.append(stored)
            self._raw.append(raw)
            self._codec.append(codec)

    def add(self, entry: PieceEntry) -> None:
        with self._lock:
            self._recent[entry.piece_id] = entry

    def entries(self) -> Iterator[PieceEntry]:
        for i in range(len(self._pack_no)):
            yield self.at(i)
        with self._lock:
            recent = list(self._recent.values())
        yield from recent

    @property
    def recent_count(self) -> int:
        return len(self._recent)

    def get(self, piece_id: bytes) -> PieceEntry | None:
        recent = self._recent.get(piece_id)
        if recent is not None:
            return recent
        i = self.position(piece_id)
        return None if i is None else self.at(i)

    def __contains__(self, piece_id: bytes) -> bool:
        return self.get(piece_id) is not None

    # Positional access to the compact table (prune marks liveness by position).

    @property
    def table_size(self) -> int:
        return len(self._pack_no)

    def position(self, piece_id: bytes) -> int | None:
        n = len(self._pack_no)
        i = bisect.bisect_left(_IdView(self._ids), piece_id, 0, n)
        if i < n and self._ids[i * ID_SIZE : (i + 1) * ID_SIZE] == piece_id:
            return i
        return None

    def at(self, i: int) -> PieceEntry:
        return PieceEntry(
            bytes(self._ids[i * ID_SIZE : (i + 1) * ID_SIZE]),
            self._packs[self._pack_no[i]],
            self._offset[i],
            self._stored[i],
            self._raw[i],
            self._codec[i],
        )

    def pack_number_at(self, i: int) -> int:
        return self._pack_no[i]

    def stored_size_at(self, i: int) -> int:
        return self._stored[i]

    @property
    def packs(self) -> list[bytes]:
        return self._packs

    def pack_ids(self) -> set[bytes]:
        return set(self._packs) | {e.pack_id for e in self._recent.values()}


class _IdView:
    def __init__(self, ids: bytearray) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids) // ID_SIZE

    def __getitem__(self, i: int) -> bytes:
        return bytes(self._ids[i * ID_SIZE : (i + 1) * ID_SIZE])


class IndexStore(RepositoryState):
    """Loading, following and writing the index segments (part of ``Repository``)."""

    def _read_segments(self, keys: Sequence[str]) -> list[list[PieceEntry]]:
        """The entries of index segments, fetched in parallel. Segments never change, and
        ``keys`` come from a listing of ``index/``: the local cache may serve them."""
        return self._parallel(
            lambda k: self.fetch_checked(
                k, lambda blob: list(fmt.decode_index(self.sealer, blob, k))
            ),
            keys,
        )

    def _forget_vanished_segments(self, listed: list[str]) -> None:
        """Cached segments that ``index/`` no longer lists (prune removed them) go."""
        if self.cache is not None:
            self.cache.retain("index", set(listed))

    def reload_index(self) -> list[str]:
        """Load every index segment afresh into the compact table. Returns the segment keys."""
        with self._index_lock:
            keys = [info.key for info in self.storage.list("index/")]
            self._forget_vanished_segments(keys)
            segments = self._read_segments(keys)
            self.index.build(e for seg in segments for e in seg)
            self._segments = set(keys)
            self._index_loaded = True
            return keys

    def load_index(self) -> None:
        with self._index_lock:
            if self._index_loaded:
                return
            keys = [info.key for info in self.storage.list("index/")]
            self._forget_vanished_segments(keys)
            segments = self._read_segments(keys)
            self.index.build(e for seg in segments for e in seg)
            self._segments.update(keys)
            self._index_loaded = True

    def refresh_index(self) -> int:
        """Load index segments written since the index was loaded (by other processes).

        Returns how many new segments were found.
        """
        if not self._index_loaded:
            self.load_index()
            return 0
        with self._index_lock:
            keys = [i.key for i in self.storage.list("index/") if i.key not in self._segments]
            segments = self._read_segments(keys)
            for seg in segments:
                for entry in seg:
                    self.index.add(entry)
            self._segments.update(keys)
            if self.index.recent_count > 100_000:  # fold them into the compact table
                self.index.build(list(self.index.entries()))
            return len(keys)

    def find_piece(self, piece_id: bytes) -> PieceEntry | None:
        """Where a piece lives; looks for index segments newer than this process once if needed."""
        self.load_index()
        entry = self.index.get(piece_id)
        if entry is None and time.monotonic() - self._last_refresh > 2.0:
            self._last_refresh = time.monotonic()
            if self.refresh_index():
                entry = self.index.get(piece_id)
        return entry

    def write_index_segment(self, entries: Sequence[PieceEntry]) -> str | None:
        if not entries:
            return None
        key = f"index/{secrets.token_hex(16)}"
        blob = fmt.encode_index(self.sealer, entries)
        self.put_retained(key, blob)
        self.cache_put(key, blob)
        self._segments.add(key)
        return key

    def _drop_index(self) -> None:
        with self._index_lock:
            self.index = PieceIndex()
            self._segments = set()
            self._index_loaded = False

    def _revalidate_index(self) -> None:
        """A segment we loaded is gone (prune rewrote the index): rebuild; else add new ones."""
        with self._index_lock:
            listed = [info.key for info in self.storage.list("index/")]
            self._forget_vanished_segments(listed)
            vanished = bool(self._segments - set(listed))
        if vanished:
            self._drop_index()
        else:
            self.refresh_index()
