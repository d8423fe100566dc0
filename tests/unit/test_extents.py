"""Chain resolution, range checking and grid splitting, against a byte-level model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.backend.engine.extents import (
    checked_ranges,
    image_digest,
    resolve_chain,
    split_on_grid,
    subtract,
)
from lamina.backend.engine.format import EXTENT_DATA, EXTENT_UNALLOCATED, EXTENT_ZERO, Extent
from lamina.backend.errors import ChangedRangesError

CAPACITY = 256


def _model_bytes(maps: list[list[Extent]]) -> list[tuple[int, bytes, int] | None]:
    """Oldest-first overlay, one byte at a time: what each byte of the volume reads."""
    volume: list[tuple[int, bytes, int] | None] = [None] * CAPACITY
    for extents in reversed(maps):  # maps are newest first
        for e in extents:
            for i in range(e.length):
                if e.kind == EXTENT_DATA:
                    volume[e.offset + i] = (EXTENT_DATA, e.piece_id, e.piece_offset + i)
                else:
                    volume[e.offset + i] = None
    return volume


def _resolved_bytes(resolved: list[Extent]) -> list[tuple[int, bytes, int] | None]:
    volume: list[tuple[int, bytes, int] | None] = [None] * CAPACITY
    for e in resolved:
        for i in range(e.length):
            assert volume[e.offset + i] is None, "resolved extents overlap"
            if e.kind == EXTENT_DATA:
                volume[e.offset + i] = (EXTENT_DATA, e.piece_id, e.piece_offset + i)
    return volume


@st.composite
def extent_maps(draw: st.DrawFn) -> list[Extent]:
    cuts = sorted(set(draw(st.lists(st.integers(0, CAPACITY), max_size=12))))
    extents = []
    for start, end in itertools.pairwise(cuts):
        if draw(st.booleans()):
            continue
        kind = draw(st.sampled_from([EXTENT_DATA, EXTENT_DATA, EXTENT_ZERO, EXTENT_UNALLOCATED]))
        piece = bytes([draw(st.integers(1, 255))]) * 32 if kind == EXTENT_DATA else bytes(32)
        extents.append(
            Extent(
                start,
                end - start,
                kind,
                piece,
                draw(st.integers(0, 64)) if kind == EXTENT_DATA else 0,
            )
        )
    return extents


@settings(max_examples=300, deadline=None)
@given(st.lists(extent_maps(), min_size=1, max_size=6))
def test_resolution_matches_byte_model(maps: list[list[Extent]]) -> None:
    resolved = resolve_chain(maps)
    assert [e.offset for e in resolved] == sorted(e.offset for e in resolved)
    assert _resolved_bytes(resolved) == _model_bytes(maps)


def test_newer_zero_hides_older_data() -> None:
    full = [Extent(0, 100, EXTENT_DATA, b"a" * 32)]
    incr = [Extent(10, 20, EXTENT_ZERO)]
    resolved = resolve_chain([incr, full])
    data = [(e.offset, e.length, e.piece_offset) for e in resolved if e.kind == EXTENT_DATA]
    assert data == [(0, 10, 0), (30, 70, 30)]


def test_digest_ignores_how_a_piece_was_cut() -> None:
    whole = [Extent(0, 100, EXTENT_DATA, b"p" * 32)]
    cut = [Extent(0, 40, EXTENT_DATA, b"p" * 32), Extent(40, 60, EXTENT_DATA, b"p" * 32, 40)]
    assert image_digest(1000, whole) == image_digest(1000, cut)
    assert image_digest(1000, whole) != image_digest(1001, whole)
    moved = [Extent(1, 100, EXTENT_DATA, b"p" * 32)]
    assert image_digest(1000, whole) != image_digest(1000, moved)


def test_checked_ranges_merges_adjacent() -> None:
    assert list(checked_ranges([(0, 4096), (4096, 4096), (16384, 4096)], 1 << 20)) == [
        (0, 8192),
        (16384, 4096),
    ]


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([(4096, 4096), (0, 4096)], "out of order"),
        ([(0, 8192), (4096, 4096)], "overlaps"),
        ([(0, 0)], "size 0"),
        ([(0, -5)], "size -5"),
        ([(-4096, 4096)], "negative"),
        ([(1 << 20, 4096)], "beyond the volume capacity"),
    ],
)
def test_checked_ranges_rejects_untrustworthy_input(
    ranges: list[tuple[int, int]], message: str
) -> None:
    with pytest.raises(ChangedRangesError, match=message):
        list(checked_ranges(ranges, 1 << 20))


def test_split_on_grid() -> None:
    grid = 1024
    assert list(split_on_grid([(1000, 2100)], grid)) == [
        (1000, 24),
        (1024, 1024),
        (2048, 1024),
        (3072, 28),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30)), max_size=10),
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30)), max_size=10),
)
def test_subtract_matches_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    def normalize(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        cells = sorted({x for o, n in rs for x in range(o, o + n)})
        out: list[tuple[int, int]] = []
        for x in cells:
            if out and out[-1][0] + out[-1][1] == x:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((x, 1))
        return out

    na, nb = normalize(a), normalize(b)
    got = {x for o, n in subtract(na, nb) for x in range(o, o + n)}
    want = {x for o, n in na for x in range(o, o + n)} - {x for o, n in nb for x in range(o, o + n)}
    assert got == want
