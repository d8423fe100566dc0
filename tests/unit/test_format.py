"""Binary layouts of repository objects: round trips, and hostile bytes give CorruptObject."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.backend.engine import format as fmt
from lamina.backend.engine.crypto import ID_SIZE, Keys, Sealer, checksum
from lamina.backend.engine.format import (
    EXTENT_DATA,
    EXTENT_UNALLOCATED,
    EXTENT_ZERO,
    KIND_INDEX,
    KIND_MAP,
    MAGIC,
    PACK_TRAILER_SIZE,
    Extent,
    PieceEntry,
)
from lamina.backend.errors import CorruptObject

PLAIN = Sealer(None)
SEALED = Sealer(Keys(bytes(range(32)), bytes(range(32, 64))))
OTHER_KEYS = Sealer(Keys(bytes(32), bytes(32)))
SEALERS = pytest.mark.parametrize("sealer", [PLAIN, SEALED], ids=["plain", "sealed"])
PROPERTY = settings(max_examples=60)

piece_ids = st.binary(min_size=ID_SIZE, max_size=ID_SIZE)
u32 = st.integers(0, 2**32 - 1)
entries_strategy = st.lists(
    st.builds(
        PieceEntry,
        piece_id=piece_ids,
        pack_id=st.binary(min_size=16, max_size=16),
        offset=u32,
        stored_size=u32,
        raw_size=u32,
        codec=st.integers(0, 255),
    ),
    max_size=40,
    unique_by=lambda e: e.piece_id,
)


@st.composite
def extent_lists(draw: st.DrawFn) -> tuple[int, list[Extent]]:
    """A capacity and sorted, non-overlapping extents inside it (gaps allowed)."""
    capacity = draw(st.integers(1, 2**48))
    cuts = sorted(set(draw(st.lists(st.integers(0, capacity), max_size=20))) | {0, capacity})
    extents = []
    for start, end in itertools.pairwise(cuts):
        if draw(st.booleans()):
            continue
        kind = draw(st.sampled_from([EXTENT_DATA, EXTENT_ZERO, EXTENT_UNALLOCATED]))
        if kind == EXTENT_DATA:
            extents.append(Extent(start, end - start, kind, draw(piece_ids), draw(u32)))
        else:
            extents.append(Extent(start, end - start, kind))
    return capacity, extents


def _every_damage(blob: bytes) -> list[bytes]:
    """Truncations at every length and a flipped bit in every byte."""
    damaged = [blob[:n] for n in range(len(blob))]
    damaged += [blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :] for i in range(len(blob))]
    return damaged


def _refuses(decode: Callable[[bytes], object], blob: bytes) -> None:
    with pytest.raises(CorruptObject):
        result = decode(blob)
        if not isinstance(result, (list, dict, tuple)):
            list(result)  # type: ignore[call-overload]  # generators fail only when drained


# ----------------------------------------------------------------------------- envelopes


@SEALERS
@pytest.mark.parametrize("compress", [True, False])
def test_envelope_round_trip(sealer: Sealer, compress: bool) -> None:
    body = b"lamina" * 1000 + bytes(range(256))
    blob = fmt.wrap(sealer, KIND_INDEX, body, compress=compress)
    assert blob.startswith(MAGIC)
    assert fmt.unwrap(sealer, KIND_INDEX, blob, "segment x") == body
    if compress:
        assert len(blob) < len(body)


@SEALERS
def test_empty_body_round_trips(sealer: Sealer) -> None:
    blob = fmt.wrap(sealer, KIND_MAP, b"")
    assert fmt.unwrap(sealer, KIND_MAP, blob, "map") == b""


def test_sealed_envelope_hides_the_body() -> None:
    body = b"secret piece list " * 50
    blob = fmt.wrap(SEALED, KIND_INDEX, body, compress=False)
    assert b"secret" not in blob


@SEALERS
def test_every_damaged_envelope_is_corrupt(sealer: Sealer) -> None:
    blob = fmt.wrap(sealer, KIND_INDEX, b"some index records " * 4)
    for damaged in _every_damage(blob):
        with pytest.raises(CorruptObject):
            fmt.unwrap(sealer, KIND_INDEX, damaged, "segment x")


def test_wrong_kind_is_corrupt() -> None:
    blob = fmt.wrap(PLAIN, KIND_INDEX, b"records")
    with pytest.raises(CorruptObject, match="not a lamina object of the expected kind"):
        fmt.unwrap(PLAIN, KIND_MAP, blob, "map x")


def test_sealed_object_in_a_plain_repository_and_back() -> None:
    sealed = fmt.wrap(SEALED, KIND_INDEX, b"records")
    plain = fmt.wrap(PLAIN, KIND_INDEX, b"records")
    with pytest.raises(CorruptObject, match="encrypted but the repository config says it is not"):
        fmt.unwrap(PLAIN, KIND_INDEX, sealed, "segment x")
    with pytest.raises(CorruptObject, match="not encrypted in an encrypted repository"):
        fmt.unwrap(SEALED, KIND_INDEX, plain, "segment x")


def test_object_sealed_with_other_keys_fails_authentication() -> None:
    blob = fmt.wrap(OTHER_KEYS, KIND_INDEX, b"records")
    with pytest.raises(CorruptObject, match="fails its authentication check"):
        fmt.unwrap(SEALED, KIND_INDEX, blob, "segment x")


def test_header_is_authenticated() -> None:
    """The kind and flags are the AAD: moving a sealed body under another header fails."""
    blob = fmt.wrap(SEALED, KIND_INDEX, b"records", compress=False)
    moved = struct.pack("<4sBB", MAGIC, KIND_MAP, fmt.FLAG_SEALED) + blob[6:]
    with pytest.raises(CorruptObject, match="authentication"):
        fmt.unwrap(SEALED, KIND_MAP, moved, "map x")


def test_bad_zstd_with_a_valid_checksum_is_corrupt() -> None:
    """A checksum proves only that the bytes are the writer's; they must still decompress."""
    header = struct.pack("<4sBB", MAGIC, KIND_INDEX, fmt.FLAG_ZSTD)
    for body in (b"not zstd at all", zstandard.ZstdCompressor().compress(b"x" * 100)[:-3]):
        blob = header + body + checksum(header + body)
        with pytest.raises(CorruptObject, match="does not decompress"):
            fmt.unwrap(PLAIN, KIND_INDEX, blob, "segment x")


@SEALERS
@PROPERTY
@given(body=st.binary(max_size=2000), compress=st.booleans())
def test_envelope_round_trips_any_body(sealer: Sealer, body: bytes, compress: bool) -> None:
    blob = fmt.wrap(sealer, KIND_INDEX, body, compress=compress)
    assert fmt.unwrap(sealer, KIND_INDEX, blob, "segment x") == body


@SEALERS
@PROPERTY
@given(blob=st.binary(max_size=200))
def test_random_bytes_never_unwrap(sealer: Sealer, blob: bytes) -> None:
    with pytest.raises(CorruptObject):
        fmt.unwrap(sealer, KIND_INDEX, blob, "segment x")


# ----------------------------------------------------------------------------- index segments


@SEALERS
@PROPERTY
@given(entries=entries_strategy)
def test_index_round_trip_sorts_by_piece(sealer: Sealer, entries: list[PieceEntry]) -> None:
    blob = fmt.encode_index(sealer, entries)
    decoded = list(fmt.decode_index(sealer, blob, "segment x"))
    assert decoded == sorted(entries, key=lambda e: e.piece_id)


@SEALERS
def test_damaged_index_is_corrupt(sealer: Sealer) -> None:
    entries = [PieceEntry(bytes([i]) * 32, b"p" * 16, i * 100, 100, 200, 1) for i in range(3)]
    blob = fmt.encode_index(sealer, entries)
    for damaged in _every_damage(blob):
        _refuses(lambda b: fmt.decode_index(sealer, b, "segment x"), damaged)


def test_index_with_a_partial_record_is_corrupt() -> None:
    entry = PieceEntry(b"a" * 32, b"p" * 16, 0, 10, 10, 0)
    body = fmt.unwrap(PLAIN, KIND_INDEX, fmt.encode_index(PLAIN, [entry]), "segment x")
    blob = fmt.wrap(PLAIN, KIND_INDEX, body[:-1])
    with pytest.raises(CorruptObject, match="truncated record"):
        list(fmt.decode_index(PLAIN, blob, "segment x"))


# ----------------------------------------------------------------------------- pack headers


@SEALERS
@PROPERTY
@given(entries=entries_strategy, data=st.binary(max_size=300))
def test_pack_header_round_trip(sealer: Sealer, entries: list[PieceEntry], data: bytes) -> None:
    pack_id = b"k" * 16
    entries = [
        PieceEntry(e.piece_id, pack_id, e.offset, e.stored_size, e.raw_size, e.codec)
        for e in entries
    ]
    pack = data + fmt.pack_header(sealer, entries)
    # The reader fetches some tail of the pack; any tail holding the whole header will do.
    for tail in (pack, pack[len(data) // 2 :], pack[len(data) :]):
        assert fmt.parse_pack_header(sealer, pack_id, tail, "pack x") == entries


@SEALERS
def test_damaged_pack_header_is_corrupt(sealer: Sealer) -> None:
    entries = [PieceEntry(bytes([i]) * 32, b"k" * 16, i * 10, 10, 20, 0) for i in range(2)]
    header = fmt.pack_header(sealer, entries)
    for damaged in _every_damage(header):
        _refuses(lambda b: fmt.parse_pack_header(sealer, b"k" * 16, b, "pack x"), damaged)


def test_pack_trailer_longer_than_the_tail_is_corrupt() -> None:
    header = fmt.pack_header(PLAIN, [])
    too_long = header[:-PACK_TRAILER_SIZE] + struct.pack("<I4s", 2**32 - 1, fmt.PACK_MAGIC)
    with pytest.raises(CorruptObject, match="no valid pack trailer"):
        fmt.parse_pack_header(PLAIN, b"k" * 16, too_long, "pack x")


def test_pack_header_with_a_partial_record_is_corrupt() -> None:
    body = struct.pack("<32sIIIB", b"a" * 32, 0, 1, 1, 0)[:-1]
    header = fmt.wrap(PLAIN, fmt.KIND_PACK_HEADER, body)
    tail = header + struct.pack("<I4s", len(header), fmt.PACK_MAGIC)
    with pytest.raises(CorruptObject, match="truncated header record"):
        fmt.parse_pack_header(PLAIN, b"k" * 16, tail, "pack x")


@SEALERS
@PROPERTY
@given(tail=st.binary(max_size=200))
def test_random_pack_tails_are_corrupt(sealer: Sealer, tail: bytes) -> None:
    with pytest.raises(CorruptObject):
        fmt.parse_pack_header(sealer, b"k" * 16, tail, "pack x")


# ----------------------------------------------------------------------------- extent maps


@SEALERS
@PROPERTY
@given(case=extent_lists())
def test_map_round_trip(sealer: Sealer, case: tuple[int, list[Extent]]) -> None:
    capacity, extents = case
    blob = fmt.encode_map(sealer, capacity, 65536, extents)
    assert fmt.decode_map(sealer, blob, "map x") == (capacity, extents)
    assert list(fmt.iter_map_piece_ids(sealer, blob, "map x")) == [
        e.piece_id for e in extents if e.kind == EXTENT_DATA
    ]


@SEALERS
def test_damaged_map_is_corrupt(sealer: Sealer) -> None:
    extents = [Extent(0, 4096, EXTENT_DATA, b"d" * 32, 0), Extent(4096, 4096, EXTENT_ZERO)]
    blob = fmt.encode_map(sealer, 8192, 4096, extents)
    for damaged in _every_damage(blob):
        _refuses(lambda b: fmt.decode_map(sealer, b, "map x"), damaged)
        _refuses(lambda b: fmt.iter_map_piece_ids(sealer, b, "map x"), damaged)


def _raw_map(capacity: int, count: int, records: list[tuple[int, int, int]]) -> bytes:
    """A well-sealed map whose body says whatever the test wants."""
    body = struct.pack("<QQQ", capacity, 4096, count) + b"".join(
        struct.pack("<QQBI32s", offset, length, kind, 0, b"d" * 32)
        for offset, length, kind in records
    )
    return fmt.wrap(PLAIN, KIND_MAP, body)


@pytest.mark.parametrize(
    ("capacity", "records"),
    [
        (8192, [(4096, 4096, EXTENT_DATA), (0, 4096, EXTENT_DATA)]),  # out of order
        (8192, [(0, 4096, EXTENT_DATA), (2048, 4096, EXTENT_DATA)]),  # overlapping
        (8192, [(0, 0, EXTENT_DATA)]),  # empty
        (8192, [(4096, 8192, EXTENT_DATA)]),  # past the capacity
        (8192, [(0, 4096, 7)]),  # unknown kind
        (2**64 - 1, [(2**64 - 2, 2**64 - 1, EXTENT_DATA)]),  # end overflows 64 bits
    ],
    ids=["unordered", "overlap", "empty", "past-capacity", "unknown-kind", "overflow"],
)
def test_invalid_extents_are_corrupt(capacity: int, records: list[tuple[int, int, int]]) -> None:
    with pytest.raises(CorruptObject, match="invalid extent"):
        fmt.decode_map(PLAIN, _raw_map(capacity, len(records), records), "map x")


@pytest.mark.parametrize("count", [0, 2, 2**64 - 1])
def test_map_whose_count_disagrees_with_its_length_is_corrupt(count: int) -> None:
    blob = _raw_map(8192, count, [(0, 4096, EXTENT_DATA)])
    with pytest.raises(CorruptObject, match="wrong length"):
        fmt.decode_map(PLAIN, blob, "map x")
    with pytest.raises(CorruptObject, match="wrong length"):
        list(fmt.iter_map_piece_ids(PLAIN, blob, "map x"))


def test_map_without_a_header_is_corrupt() -> None:
    blob = fmt.wrap(PLAIN, KIND_MAP, b"\0" * 23)
    for decode in (fmt.decode_map, fmt.iter_map_piece_ids):
        _refuses(lambda b, decode=decode: decode(PLAIN, b, "map x"), blob)  # type: ignore[misc]


# ----------------------------------------------------------------------------- manifests

MANIFEST = {"id": "0123456789abcdef", "volume": "c/ns/v", "labels": {"app": "db\x1b[2J"}}


@SEALERS
def test_manifest_round_trip(sealer: Sealer) -> None:
    blob = fmt.encode_manifest(sealer, MANIFEST)
    assert fmt.decode_manifest(sealer, blob, "manifest x") == MANIFEST
    # Unencrypted manifests stay plain JSON, so that they can be read by hand.
    assert blob.startswith(MAGIC) == sealer.encrypted


@SEALERS
def test_damaged_manifest_is_corrupt(sealer: Sealer) -> None:
    blob = fmt.encode_manifest(sealer, MANIFEST)
    for damaged in _every_damage(blob):
        try:
            decoded = fmt.decode_manifest(sealer, damaged, "manifest x")
        except CorruptObject:
            continue
        # Plain JSON carries no checksum: a flipped bit (in a value, say) may still parse,
        # but what comes back is still a manifest.
        assert not sealer.encrypted, "a damaged sealed manifest was accepted"
        assert "id" in decoded


def test_plain_manifest_in_an_encrypted_repository_is_corrupt() -> None:
    blob = fmt.encode_manifest(PLAIN, MANIFEST)
    with pytest.raises(CorruptObject, match="not encrypted in an encrypted repository"):
        fmt.decode_manifest(SEALED, blob, "manifest x")


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'"a string"',
        b'{"volume": "no id"}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion
        b'{"id": 1' + b"0" * 5000 + b"}",  # an integer longer than Python converts
    ],
    ids=["empty", "text", "bad-utf8", "list", "string", "no-id", "deep", "huge-int"],
)
def test_hostile_plain_manifests_are_corrupt(blob: bytes) -> None:
    with pytest.raises(CorruptObject):
        fmt.decode_manifest(PLAIN, blob, "manifest x")


def test_sealed_manifest_body_that_is_not_a_manifest_is_corrupt() -> None:
    blob = fmt.wrap(SEALED, fmt.KIND_MANIFEST, json.dumps([1, 2]).encode(), compress=False)
    with pytest.raises(CorruptObject, match="not a restore point manifest"):
        fmt.decode_manifest(SEALED, blob, "manifest x")
