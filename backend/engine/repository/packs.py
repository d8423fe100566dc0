"""Packs: writing pieces into pack objects, and reading pieces and headers back.

A pack (``packs/<aa>/<pack-id>``) holds sealed pieces back to back, then a sealed header
listing them (docs/format.md, "Packs").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ...errors import CorruptObject, LaminaError, MissingObject
from .. import format as fmt
from ..format import PieceEntry
from ..storage import ObjectNotFound, ShortRead
from .base import RepositoryState


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


SMALL_PACK_SIZE = 4 * 1024 * 1024
PACKS_SIDE_BY_SIDE = 8


def pack_size_for(planned_bytes: int | None, pack_size: int) -> int:
    """The pack size for a job that will read about ``planned_bytes`` (None: not known).

    A small job (a changed-ranges incremental of some MiB) would otherwise fill one or two
    packs and upload them only when full, one after the other, after all its reading: with
    packs of an eighth of its bytes, down to 4 MiB, its uploads start early and run side by
    side. A large job keeps the repository's size, since each object costs a request.
    """
    if planned_bytes is None:
        return pack_size
    floor = min(pack_size, SMALL_PACK_SIZE)
    return max(floor, min(pack_size, planned_bytes // PACKS_SIDE_BY_SIDE))


def pack_runs(
    entries: Iterable[PieceEntry],
    *,
    max_run: int = 8 * 1024 * 1024,
    max_gap: int = 256 * 1024,
    max_raw: int = 16 * 1024 * 1024,
) -> list[list[PieceEntry]]:
    """Group pieces into runs of neighbours in one pack, each run read with one ranged GET.

    A run spans at most ``max_run`` stored bytes, skips gaps of at most ``max_gap`` bytes,
    and decompresses to at most ``max_raw`` bytes (text can expand fivefold: memory is
    bounded by what a run becomes, not by what it downloads).
    """
    runs: list[list[PieceEntry]] = []
    raw = 0
    for en in sorted(entries, key=lambda en: (en.pack_id, en.offset)):
        if runs:
            last = runs[-1][-1]
            if (
                last.pack_id == en.pack_id
                and en.offset - (last.offset + last.stored_size) <= max_gap
                and en.offset + en.stored_size - runs[-1][0].offset <= max_run
                and raw + en.raw_size <= max_raw
            ):
                runs[-1].append(en)
                raw += en.raw_size
                continue
        runs.append([en])
        raw = en.raw_size
    return runs


class PackWriter:
    """Collects sealed pieces into packs of about ``pack_size`` (the repository's unless
    given) and uploads them in the background.

    At most ``max_in_flight`` packs are buffered or uploading at once, so memory is bounded.
    """

    def __init__(
        self,
        repo: RepositoryState,
        pool: ThreadPoolExecutor,
        max_in_flight: int,
        pack_size: int | None = None,
    ) -> None:
        self.repo = repo
        self.pool = pool
        self.pack_size = pack_size or repo.pack_size
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._buffer = bytearray()
        self._entries: list[PieceEntry] = []
        self._pack_id = os.urandom(16)
        self._futures: list[Future[list[PieceEntry]]] = []
        self.written: list[PieceEntry] = []
        self.packs_written = 0
        self.bytes_written = 0

    def add(self, piece_id: bytes, blob: bytes, raw_size: int, codec: int) -> PieceEntry:
        entry = PieceEntry(piece_id, self._pack_id, len(self._buffer), len(blob), raw_size, codec)
        self._buffer += blob
        self._entries.append(entry)
        if len(self._buffer) >= self.pack_size:
            self._flush()
        return entry

    def _flush(self) -> None:
        if not self._entries:
            return
        self._raise_failures()
        # The header goes onto the buffer itself: a copy of a 16 MiB pack costs 16 MiB more RSS.
        data = self._buffer
        data += fmt.pack_header(self.repo.sealer, self._entries)
        entries, pack_id = self._entries, self._pack_id
        self._buffer = bytearray()
        self._entries = []
        self._pack_id = os.urandom(16)
        self._slots.acquire()
        self._futures.append(self.pool.submit(self._upload, pack_id, data, entries))

    def _upload(
        self, pack_id: bytes, data: bytearray, entries: list[PieceEntry]
    ) -> list[PieceEntry]:
        try:
            self.repo.put_retained(pack_key(pack_id), data)
            self.packs_written += 1
            self.bytes_written += len(data)
            return entries
        finally:
            self._slots.release()

    def _raise_failures(self) -> None:
        pending = []
        for f in self._futures:
            if f.done():
                self.written.extend(f.result())  # re-raises an upload failure
            else:
                pending.append(f)
        self._futures = pending

    def finish(self) -> list[PieceEntry]:
        """Upload what is left and wait for every pack. Returns every entry written."""
        self._flush()
        for f in self._futures:
            self.written.extend(f.result())
        self._futures = []
        return self.written

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            if not f.cancelled():
                try:
                    f.result()
                except Exception:
                    pass
        self._futures = []


class PackStore(RepositoryState):
    """Pieces in and out of packs (part of ``Repository``)."""

    def piece_id(self, data: bytes | memoryview) -> bytes:
        return self.codec.piece_id(data)

    def encode_piece(self, piece_id: bytes, data: bytes | memoryview) -> tuple[bytes, int]:
        """Compress (when it shrinks) and seal a piece. Returns the blob and its codec."""
        return self.codec.encode(piece_id, data)

    def decode_piece(self, entry: PieceEntry, blob: bytes) -> bytes:
        """Open, decompress and check a stored piece against its id."""
        return self.codec.decode(entry, blob)

    def read_piece(self, entry: PieceEntry) -> bytes:
        try:
            blob = self.storage.get_range(pack_key(entry.pack_id), entry.offset, entry.stored_size)
        except ObjectNotFound:
            raise MissingObject(f"pack {entry.pack_id.hex()} is missing") from None
        except ShortRead:
            raise CorruptObject(f"pack {entry.pack_id.hex()} is truncated") from None
        return self.codec.decode(entry, blob)

    def read_pack_run(self, entries: Sequence[PieceEntry]) -> list[bytes | LaminaError]:
        """Read pieces that sit back to back in one pack with a single ranged GET."""
        first, last = entries[0], entries[-1]
        start, end = first.offset, last.offset + last.stored_size
        try:
            blob = self.storage.get_range(pack_key(first.pack_id), start, end - start)
        except ObjectNotFound:
            return [MissingObject(f"pack {first.pack_id.hex()} is missing")] * len(entries)
        except ShortRead:
            return [CorruptObject(f"pack {first.pack_id.hex()} is truncated")] * len(entries)
        out: list[bytes | LaminaError] = []
        for entry in entries:
            try:
                piece_start = entry.offset - start
                out.append(
                    self.codec.decode(entry, blob[piece_start : piece_start + entry.stored_size])
                )
            except LaminaError as err:
                out.append(err)
        return out

    def read_stored_span(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes of a pack from ``offset``, as stored, unchecked. Only a raw piece of
        an unencrypted repository reads as its data this way, and the caller must check what
        it got (delta.py checks each block against its fingerprint)."""
        try:
            return self.storage.get_range(pack_key(pack_id), offset, length)
        except ObjectNotFound:
            raise MissingObject(f"pack {pack_id.hex()} is missing") from None
        except ShortRead:
            raise CorruptObject(f"pack {pack_id.hex()} is truncated") from None

    def list_packs(self) -> Iterator[tuple[bytes, int]]:
        for info in self.storage.list("packs/"):
            name = info.key.rsplit("/", 1)[-1]
            try:
                yield bytes.fromhex(name), info.size
            except ValueError:
                continue

    def read_pack_header(self, pack_id: bytes) -> list[PieceEntry]:
        key = pack_key(pack_id)
        info = self.storage.head(key)
        if info is None:
            raise MissingObject(f"pack {pack_id.hex()} is missing")
        tail_len = min(info.size, 256 * 1024)
        tail = self.storage.get_range(key, info.size - tail_len, tail_len)
        try:
            return fmt.parse_pack_header(self.sealer, pack_id, tail, f"pack {pack_id.hex()}")
        except CorruptObject:
            if tail_len == info.size:
                raise
            return fmt.parse_pack_header(
                self.sealer, pack_id, self.storage.get(key), f"pack {pack_id.hex()}"
            )
