"""The compact piece index: build, add, get, positions and entries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.backend.engine.format import PIECE_RAW, PIECE_ZSTD, PieceEntry
from lamina.backend.engine.repository.index import PieceIndex


def _piece(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


def _entry(n: int, pack: bytes = b"A" * 16, offset: int = 0) -> PieceEntry:
    return PieceEntry(_piece(n), pack, offset, 100 + n, 200 + n, PIECE_ZSTD)


def test_empty_index() -> None:
    index = PieceIndex()
    assert len(index) == 0 and index.table_size == 0 and index.recent_count == 0
    assert index.get(_piece(1)) is None
    assert _piece(1) not in index
    assert index.position(_piece(1)) is None
    assert list(index.entries()) == [] and index.pack_ids() == set()


def test_build_sorts_and_finds_every_piece() -> None:
    entries = [_entry(n, offset=n * 1000) for n in (5, 1, 9, 3)]
    index = PieceIndex()
    index.build(entries)
    assert len(index) == index.table_size == 4
    for e in entries:
        assert index.get(e.piece_id) == e
        assert e.piece_id in index
    assert [index.at(i).piece_id for i in range(4)] == [_piece(n) for n in (1, 3, 5, 9)]
    assert [index.position(_piece(n)) for n in (1, 3, 5, 9)] == [0, 1, 2, 3]
    for missing in (0, 2, 4, 10, 0xFFFF):
        assert index.position(_piece(missing)) is None
        assert index.get(_piece(missing)) is None


def test_build_keeps_one_copy_of_a_piece_in_two_packs() -> None:
    first = _entry(1, pack=b"A" * 16, offset=500)
    second = _entry(1, pack=b"B" * 16, offset=0)
    index = PieceIndex()
    index.build([first, _entry(2, pack=b"B" * 16), second, first])
    assert len(index) == 2
    assert index.get(_piece(1)) in (first, second)
    assert [e.piece_id for e in index.entries()] == [_piece(1), _piece(2)]
    assert index.pack_ids() == {b"A" * 16, b"B" * 16}
    assert sorted(index.packs) == [b"A" * 16, b"B" * 16]


def test_packs_are_numbered_and_sizes_read_by_position() -> None:
    index = PieceIndex()
    index.build([_entry(1, pack=b"A" * 16), _entry(2, pack=b"B" * 16), _entry(3, pack=b"A" * 16)])
    for n in (1, 2, 3):
        i = index.position(_piece(n))
        assert i is not None
        assert index.packs[index.pack_number_at(i)] == index.at(i).pack_id
        assert index.stored_size_at(i) == 100 + n


def test_added_entries_are_found_before_a_rebuild() -> None:
    index = PieceIndex()
    index.build([_entry(1)])
    added = PieceEntry(_piece(7), b"C" * 16, 42, 10, 10, PIECE_RAW)
    index.add(added)
    assert len(index) == 2 and index.recent_count == 1 and index.table_size == 1
    assert index.get(_piece(7)) == added and _piece(7) in index
    assert index.position(_piece(7)) is None  # positions cover the compact table only
    assert list(index.entries()) == [_entry(1), added]
    assert index.pack_ids() == {b"A" * 16, b"C" * 16}


def test_an_added_entry_shadows_the_table() -> None:
    index = PieceIndex()
    index.build([_entry(1)])
    moved = _entry(1, pack=b"D" * 16, offset=77)
    index.add(moved)
    assert index.get(_piece(1)) == moved


def test_build_replaces_everything() -> None:
    index = PieceIndex()
    index.build([_entry(1), _entry(2)])
    index.add(_entry(3))
    index.build([_entry(4)])
    assert len(index) == 1 and index.recent_count == 0
    assert [e.piece_id for e in index.entries()] == [_piece(4)]
    assert index.get(_piece(1)) is None and index.get(_piece(3)) is None
    assert index.packs == [b"A" * 16]


@pytest.mark.parametrize("field", ["offset", "stored_size", "raw_size"])
def test_sizes_up_to_32_bits_are_kept(field: str) -> None:
    values = {"offset": 0, "stored_size": 0, "raw_size": 0, field: 2**32 - 1}
    entry = PieceEntry(_piece(1), b"A" * 16, codec=255, **values)
    index = PieceIndex()
    index.build([entry])
    assert index.get(_piece(1)) == entry


pack_ids = st.sampled_from([bytes([c]) * 16 for c in b"ABCD"])
entries_with_duplicates = st.lists(
    st.builds(
        PieceEntry,
        piece_id=st.binary(min_size=32, max_size=32) | st.sampled_from([b"x" * 32, b"y" * 32]),
        pack_id=pack_ids,
        offset=st.integers(0, 2**32 - 1),
        stored_size=st.integers(0, 2**32 - 1),
        raw_size=st.integers(0, 2**32 - 1),
        codec=st.integers(0, 255),
    ),
    max_size=60,
)


@settings(max_examples=100)
@given(entries=entries_with_duplicates, probes=st.lists(st.binary(min_size=32, max_size=32)))
def test_build_matches_a_dict_model(entries: list[PieceEntry], probes: list[bytes]) -> None:
    copies: dict[bytes, list[PieceEntry]] = {}
    for e in entries:
        copies.setdefault(e.piece_id, []).append(e)
    index = PieceIndex()
    index.build(entries)
    assert len(index) == index.table_size == len(copies)
    listed = list(index.entries())
    assert [e.piece_id for e in listed] == sorted(copies)
    for i, e in enumerate(listed):
        assert e in copies[e.piece_id]  # one of the piece's real copies, fields intact
        assert index.position(e.piece_id) == i
        assert index.get(e.piece_id) == e == index.at(i)
    for probe in probes:
        assert (index.get(probe) is None) == (probe not in copies)
    assert index.pack_ids() == {e.pack_id for e in entries}
