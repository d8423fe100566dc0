"""Sub-cell fingerprints: one short hash per fingerprint block of what a point covers.

A scan incremental (no changed ranges) compares the source's block hashes with the parent's
resolved fingerprints and stores only the blocks that differ. docs/format.md ("Fingerprints")
defines the object and the rules that keep it right through consolidation and deletion:

* a point lists every block its own map touches (and may list more), each with the hash of
  the block as the point reads it, or UNKNOWN;
* a block's fingerprint at point P comes from the newest point of P's chain that lists it,
  or, for points without a fingerprint object, UNKNOWN wherever their map touches it;
* a block nothing in the chain lists or touches reads as zeros.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import blake3

from ..errors import CorruptObject
from . import format as fmt
from .crypto import Sealer
from .extents import resolve_chain
from .format import EXTENT_DATA, EXTENT_ZERO, Extent

DEFAULT_FINGERPRINT_BLOCK = 64 * 1024
MIN_FINGERPRINT_BLOCK = 4 * 1024
FINGERPRINT_SIZE = 16
UNKNOWN = bytes(FINGERPRINT_SIZE)  # no hash known: the scan falls back to cell hashes there


class Fingerprinter:
    """Hashes fingerprint blocks: BLAKE3, keyed in an encrypted repository."""

    def __init__(self, block_size: int, key: bytes | None) -> None:
        self.block_size = block_size
        self._key = key
        self._zero: dict[int, bytes] = {}

    def of(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._key is None:
            h = blake3.blake3(data, max_threads=1)
        else:
            h = blake3.blake3(data, key=self._key, max_threads=1)
        return self._checked(h.digest(FINGERPRINT_SIZE))

    @staticmethod
    def _checked(digest: bytes) -> bytes:
        # The all-zero value means UNKNOWN; a real hash never takes it (p = 2^-128 aside).
        return digest if digest != UNKNOWN else b"\x01" + digest[1:]

    def of_whole_piece(self, piece_id: bytes) -> bytes | None:
        """The fingerprint of a block that is exactly one piece, from the piece's id, when the
        two hashes agree (unkeyed: a BLAKE3 digest's first 16 bytes); None when keyed."""
        if self._key is not None:
            return None
        return self._checked(piece_id[:FINGERPRINT_SIZE])

    def zero(self, length: int) -> bytes:
        """The fingerprint of ``length`` zero bytes (cached: holes are common)."""
        found = self._zero.get(length)
        if found is None:
            found = self._zero.setdefault(length, self.of(bytes(length)))
        return found

    def block_length(self, block: int, capacity: int) -> int:
        start = block * self.block_size
        return min(self.block_size, capacity - start)


def fingerprint_key(id_key: bytes) -> bytes:
    """The key of the fingerprint hash, derived from the piece identity key."""
    return blake3.blake3(b"lamina fingerprint key v1", key=id_key).digest()


@dataclass(frozen=True)
class Run:
    """``count`` consecutive blocks from ``first``; ``hashes`` holds 16 bytes a block, or is
    None when every block of the run is UNKNOWN."""

    first: int
    count: int
    hashes: bytes | None

    @property
    def end(self) -> int:
        return self.first + self.count

    def hash_at(self, block: int) -> bytes:
        if self.hashes is None:
            return UNKNOWN
        i = (block - self.first) * FINGERPRINT_SIZE
        return self.hashes[i : i + FINGERPRINT_SIZE]


class Fingerprints:
    """Sorted, non-overlapping runs of block fingerprints: one point's, or a resolved chain's."""

    def __init__(self, block_size: int, runs: Sequence[Run]) -> None:
        self.block_size = block_size
        self.runs = list(runs)
        self._starts = [r.first for r in self.runs]

    def lookup(self, block: int) -> bytes | None:
        """The block's hash, UNKNOWN, or None when no point lists it (it reads as zeros)."""
        i = bisect.bisect_right(self._starts, block) - 1
        if i < 0:
            return None
        run = self.runs[i]
        if block >= run.end:
            return None
        return run.hash_at(block)

    def items(self) -> Iterator[tuple[int, bytes]]:
        for run in self.runs:
            for b in range(run.first, run.end):
                yield b, run.hash_at(b)

    @classmethod
    def from_sorted(cls, block_size: int, blocks: Sequence[int], hashes: bytes) -> Fingerprints:
        """Runs from strictly increasing block numbers and their concatenated hashes."""
        runs: list[Run] = []
        start = 0
        for i in range(1, len(blocks) + 1):
            if i == len(blocks) or blocks[i] != blocks[i - 1] + 1:
                if i > start:
                    runs.append(
                        Run(
                            blocks[start],
                            i - start,
                            hashes[start * FINGERPRINT_SIZE : i * FINGERPRINT_SIZE],
                        )
                    )
                start = i
        return cls(block_size, runs)


def touched_runs(extents: Iterable[Extent], block_size: int) -> list[Run]:
    """UNKNOWN runs over every block a map's extents touch (for points without fingerprints)."""
    runs: list[Run] = []
    for e in extents:
        first, end = e.offset // block_size, (e.end - 1) // block_size + 1
        if runs and runs[-1].end >= first:
            last = runs.pop()
            runs.append(Run(last.first, max(last.end, end) - last.first, None))
        else:
            runs.append(Run(first, end - first, None))
    return runs


def resolve_fingerprints(block_size: int, layers: Sequence[Sequence[Run]]) -> Fingerprints:
    """Merge the runs of a chain, newest first: each block from the newest layer listing it."""
    # resolve_chain already does "newest covering wins" for extents: runs ride on it as
    # extents whose piece id names the layer.
    as_extents: list[list[Extent]] = []
    for depth, runs in enumerate(layers):
        tag = depth.to_bytes(32, "little")
        layer: list[Extent] = []
        for run in runs:
            if run.hashes is None:
                layer.append(Extent(run.first, run.count, EXTENT_ZERO))
            else:
                layer.append(Extent(run.first, run.count, EXTENT_DATA, tag, 0))
        as_extents.append(layer)
    resolved = resolve_chain(as_extents)
    starts = [[r.first for r in runs] for runs in layers]
    out: list[Run] = []
    for e in resolved:
        if e.kind != EXTENT_DATA:
            out.append(Run(e.offset, e.length, None))
            continue
        depth = int.from_bytes(e.piece_id, "little")
        source = layers[depth][bisect.bisect_right(starts[depth], e.offset) - 1]
        i = (e.offset - source.first) * FINGERPRINT_SIZE
        assert source.hashes is not None
        out.append(Run(e.offset, e.length, source.hashes[i : i + e.length * FINGERPRINT_SIZE]))
    return Fingerprints(block_size, out)


class Collector:
    """Block fingerprints of a backup as they come: in order from the pipeline, plus stragglers
    (blocks a piece covers only partly) computed at the end. Compact: 24 bytes a block."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._blocks = array("Q")
        self._hashes = bytearray()
        self._extra: dict[int, bytes] = {}

    def add(self, block: int, digest: bytes) -> None:
        if not self._blocks or block > self._blocks[-1]:
            self._blocks.append(block)
            self._hashes += digest
        else:
            self._extra[block] = digest

    def __contains__(self, block: int) -> bool:
        if block in self._extra:
            return True
        i = bisect.bisect_left(self._blocks, block)
        return i < len(self._blocks) and self._blocks[i] == block

    def finish(self) -> Fingerprints:
        if not self._extra:
            return Fingerprints.from_sorted(self.block_size, self._blocks, bytes(self._hashes))
        merged: dict[int, bytes] = dict(self._extra)
        for i, b in enumerate(self._blocks):
            merged[b] = bytes(self._hashes[i * FINGERPRINT_SIZE : (i + 1) * FINGERPRINT_SIZE])
        blocks = sorted(merged)
        return Fingerprints.from_sorted(
            self.block_size, blocks, b"".join(merged[b] for b in blocks)
        )


# ------------------------------------------------------------------------ object body

_BODY_HEADER = struct.Struct("<QQQ")  # block size, capacity, run count
_RUN = struct.Struct("<QQB")  # first block, count, 1 = hashes follow in the hash area


def encode_body(fingerprints: Fingerprints, capacity: int) -> bytes:
    parts = [_BODY_HEADER.pack(fingerprints.block_size, capacity, len(fingerprints.runs))]
    parts.extend(_RUN.pack(r.first, r.count, r.hashes is not None) for r in fingerprints.runs)
    parts.extend(r.hashes for r in fingerprints.runs if r.hashes is not None)
    return b"".join(parts)


def decode_body(body: bytes, what: str) -> tuple[int, Fingerprints]:
    """(capacity, fingerprints) from an object body; refuses anything malformed."""
    if len(body) < _BODY_HEADER.size:
        raise CorruptObject(f"{what} is truncated")
    block_size, capacity, count = _BODY_HEADER.unpack_from(body)
    if block_size < MIN_FINGERPRINT_BLOCK or block_size & (block_size - 1):
        raise CorruptObject(f"{what} has an invalid block size {block_size}")
    area = _BODY_HEADER.size + count * _RUN.size
    if len(body) < area:
        raise CorruptObject(f"{what} has a wrong length for {count} runs")
    blocks_total = (capacity + block_size - 1) // block_size
    runs: list[Run] = []
    pos = area
    last_end = 0
    for first, n, has in _RUN.iter_unpack(memoryview(body)[_BODY_HEADER.size : area]):
        if first < last_end or n <= 0 or first + n > blocks_total or has > 1:
            raise CorruptObject(f"{what} has an invalid run at block {first}")
        last_end = first + n
        hashes = None
        if has:
            size = n * FINGERPRINT_SIZE
            hashes = bytes(body[pos : pos + size])
            if len(hashes) != size:
                raise CorruptObject(f"{what} is truncated")
            pos += size
        runs.append(Run(first, n, hashes))
    if pos != len(body):
        raise CorruptObject(f"{what} has {len(body) - pos} bytes too many")
    return capacity, Fingerprints(block_size, runs)


def encode(sealer: Sealer, fingerprints: Fingerprints, capacity: int) -> bytes:
    """The fingerprint object: an envelope (kind 5), compressed, sealed when encrypted."""
    return fmt.wrap(sealer, fmt.KIND_FINGERPRINTS, encode_body(fingerprints, capacity))


def decode(sealer: Sealer, blob: bytes, what: str) -> tuple[int, Fingerprints]:
    return decode_body(fmt.unwrap(sealer, fmt.KIND_FINGERPRINTS, blob, what), what)
