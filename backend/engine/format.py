"""Binary layouts of repository objects (see docs/format.md).

Every metadata object is wrapped in an *envelope*:

    magic "LAMN" | kind u8 | flags u8 | body | (unencrypted) checksum[16]

Flag bit 0: body is sealed (AES-256-GCM, AAD = the 6 header bytes). Flag bit 1: body is
zstd-compressed (before sealing). Unencrypted envelopes end with a 16-byte blake3 checksum
over everything before it, so corruption is detected without keys too.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from ..errors import CorruptObject
from .crypto import ID_SIZE, Sealer, checksum

FORMAT_VERSION = 1
MAGIC = b"LAMN"

KIND_PACK_HEADER = 1
KIND_INDEX = 2
KIND_MAP = 3
KIND_MANIFEST = 4
KIND_FINGERPRINTS = 5

FLAG_SEALED = 1
FLAG_ZSTD = 2

_HEADER = struct.Struct("<4sBB")
_CHECKSUM_SIZE = 16


def wrap(sealer: Sealer, kind: int, body: bytes, *, compress: bool = True) -> bytes:
    flags = 0
    if compress:
        body = zstandard.ZstdCompressor(level=3).compress(body)
        flags |= FLAG_ZSTD
    if sealer.encrypted:
        flags |= FLAG_SEALED
    header = _HEADER.pack(MAGIC, kind, flags)
    if sealer.encrypted:
        return header + sealer.seal(body, header)
    out = header + body
    return out + checksum(out)


def unwrap(sealer: Sealer, kind: int, blob: bytes, what: str) -> bytes:
    if len(blob) < _HEADER.size:
        raise CorruptObject(f"{what} is truncated")
    magic, found_kind, flags = _HEADER.unpack_from(blob)
    if magic != MAGIC or found_kind != kind:
        raise CorruptObject(f"{what} is not a lamina object of the expected kind")
    header = blob[: _HEADER.size]
    if flags & FLAG_SEALED:
        if not sealer.encrypted:
            raise CorruptObject(f"{what} is encrypted but the repository config says it is not")
        body = sealer.open(blob[_HEADER.size :], header, what)
    else:
        if sealer.encrypted:
            raise CorruptObject(f"{what} is not encrypted in an encrypted repository (tampered?)")
        if (
            len(blob) < _HEADER.size + _CHECKSUM_SIZE
            or checksum(blob[:-_CHECKSUM_SIZE]) != blob[-_CHECKSUM_SIZE:]
        ):
            raise CorruptObject(f"{what} fails its checksum (corrupt)")
        body = blob[_HEADER.size : -_CHECKSUM_SIZE]
    if flags & FLAG_ZSTD:
        try:
            body = zstandard.ZstdDecompressor().decompress(body)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"{what} does not decompress: {e}") from None
    return body


# ----------------------------------------------------------------------------- pieces

PIECE_RAW = 0
PIECE_ZSTD = 1


@dataclass(frozen=True, slots=True)
class PieceEntry:
    """Where a piece lives: in pack ``pack_id`` at ``offset``, ``stored_size`` bytes."""

    piece_id: bytes
    pack_id: bytes
    offset: int
    stored_size: int
    raw_size: int
    codec: int


_INDEX_RECORD = struct.Struct("<32s16sIIIB")
_PACK_RECORD = struct.Struct("<32sIIIB")
_PACK_TRAILER = struct.Struct("<I4s")
PACK_MAGIC = b"LPK1"


def encode_index(sealer: Sealer, entries: Iterable[PieceEntry]) -> bytes:
    ordered = sorted(entries, key=lambda e: e.piece_id)
    body = b"".join(
        _INDEX_RECORD.pack(e.piece_id, e.pack_id, e.offset, e.stored_size, e.raw_size, e.codec)
        for e in ordered
    )
    return wrap(sealer, KIND_INDEX, body)


def decode_index(sealer: Sealer, blob: bytes, what: str) -> Iterator[PieceEntry]:
    body = unwrap(sealer, KIND_INDEX, blob, what)
    if len(body) % _INDEX_RECORD.size:
        raise CorruptObject(f"{what} has a truncated record")
    for rec in _INDEX_RECORD.iter_unpack(body):
        yield PieceEntry(*rec)


def pack_header(sealer: Sealer, entries: Sequence[PieceEntry]) -> bytes:
    """The sealed header appended to a pack, followed by its length and the pack magic."""
    body = b"".join(
        _PACK_RECORD.pack(e.piece_id, e.offset, e.stored_size, e.raw_size, e.codec) for e in entries
    )
    header = wrap(sealer, KIND_PACK_HEADER, body)
    return header + _PACK_TRAILER.pack(len(header), PACK_MAGIC)


def parse_pack_header(sealer: Sealer, pack_id: bytes, tail: bytes, what: str) -> list[PieceEntry]:
    """Parse the header from the last bytes of a pack (which must contain the whole header)."""
    if len(tail) < _PACK_TRAILER.size:
        raise CorruptObject(f"{what} is truncated")
    length, magic = _PACK_TRAILER.unpack_from(tail, len(tail) - _PACK_TRAILER.size)
    if magic != PACK_MAGIC or length + _PACK_TRAILER.size > len(tail):
        raise CorruptObject(f"{what} has no valid pack trailer")
    start = len(tail) - _PACK_TRAILER.size - length
    body = unwrap(sealer, KIND_PACK_HEADER, tail[start : len(tail) - _PACK_TRAILER.size], what)
    if len(body) % _PACK_RECORD.size:
        raise CorruptObject(f"{what} has a truncated header record")
    return [
        PieceEntry(piece_id, pack_id, offset, stored, raw, codec)
        for piece_id, offset, stored, raw, codec in _PACK_RECORD.iter_unpack(body)
    ]


PACK_TRAILER_SIZE = _PACK_TRAILER.size


def piece_aad(piece_id: bytes) -> bytes:
    return b"piece:" + piece_id


# ----------------------------------------------------------------------------- extent maps

EXTENT_DATA = 0
EXTENT_ZERO = 1  # read, found all zeros: reads as zeros, hides the parent
EXTENT_UNALLOCATED = 2  # not allocated in the source: reads as zeros, hides the parent

NO_PIECE = bytes(ID_SIZE)


@dataclass(frozen=True, slots=True)
class Extent:
    """``length`` bytes of the volume at ``offset``.

    DATA extents read ``piece_offset``.. of piece ``piece_id``; the others read as zeros.
    """

    offset: int
    length: int
    kind: int = EXTENT_DATA
    piece_id: bytes = NO_PIECE
    piece_offset: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


_MAP_HEADER = struct.Struct("<QQQ")  # capacity, grid size, extent count
_MAP_RECORD = struct.Struct("<QQBI32s")


def encode_map(sealer: Sealer, capacity: int, grid_size: int, extents: Sequence[Extent]) -> bytes:
    parts = [_MAP_HEADER.pack(capacity, grid_size, len(extents))]
    parts.extend(
        _MAP_RECORD.pack(e.offset, e.length, e.kind, e.piece_offset, e.piece_id) for e in extents
    )
    return wrap(sealer, KIND_MAP, b"".join(parts))


def decode_map(sealer: Sealer, blob: bytes, what: str) -> tuple[int, list[Extent]]:
    body = unwrap(sealer, KIND_MAP, blob, what)
    if len(body) < _MAP_HEADER.size:
        raise CorruptObject(f"{what} is truncated")
    capacity, _grid, count = _MAP_HEADER.unpack_from(body)
    if len(body) != _MAP_HEADER.size + count * _MAP_RECORD.size:
        raise CorruptObject(f"{what} has a wrong length for {count} extents")
    extents = [
        Extent(offset, length, kind, piece_id, piece_offset)
        for offset, length, kind, piece_offset, piece_id in _MAP_RECORD.iter_unpack(
            memoryview(body)[_MAP_HEADER.size :]
        )
    ]
    last_end = 0
    for e in extents:
        if e.offset < last_end or e.length <= 0 or e.end > capacity or e.kind > EXTENT_UNALLOCATED:
            raise CorruptObject(f"{what} has an invalid extent at offset {e.offset}")
        last_end = e.end
    return capacity, extents


def iter_map_piece_ids(sealer: Sealer, blob: bytes, what: str) -> Iterator[bytes]:
    """The piece ids of a map's DATA extents, without building an object per extent."""
    body = unwrap(sealer, KIND_MAP, blob, what)
    if len(body) < _MAP_HEADER.size:
        raise CorruptObject(f"{what} is truncated")
    _capacity, _grid, count = _MAP_HEADER.unpack_from(body)
    if len(body) != _MAP_HEADER.size + count * _MAP_RECORD.size:
        raise CorruptObject(f"{what} has a wrong length for {count} extents")
    view = memoryview(body)
    for i in range(count):
        start = _MAP_HEADER.size + i * _MAP_RECORD.size
        if view[start + 16] == EXTENT_DATA:
            yield bytes(view[start + 21 : start + 53])


# ----------------------------------------------------------------------------- manifests


def encode_manifest(sealer: Sealer, manifest: dict[str, Any]) -> bytes:
    text = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    if sealer.encrypted:
        return wrap(sealer, KIND_MANIFEST, text, compress=False)
    return text


def decode_manifest(sealer: Sealer, blob: bytes, what: str) -> dict[str, Any]:
    text = unwrap(sealer, KIND_MANIFEST, blob, what) if blob.startswith(MAGIC) else blob
    if sealer.encrypted and not blob.startswith(MAGIC):
        raise CorruptObject(f"{what} is not encrypted in an encrypted repository (tampered?)")
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and integers too long to convert; a hostile
        # manifest can also nest deeper than the parser recurses.
        raise CorruptObject(f"{what} is not valid JSON (corrupt)") from None
    if not isinstance(manifest, dict) or "id" not in manifest:
        raise CorruptObject(f"{what} is not a restore point manifest")
    return manifest
