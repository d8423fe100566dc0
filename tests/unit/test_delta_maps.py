"""The blocks where two resolved maps read different bytes (delta.py's map difference)."""

from __future__ import annotations

from lamina.backend.engine.delta import _differing_blocks
from lamina.backend.engine.format import EXTENT_DATA, EXTENT_UNALLOCATED, EXTENT_ZERO, Extent

BLOCK = 100
P, Q = b"p" * 32, b"q" * 32


def data(offset: int, length: int, piece: bytes, piece_offset: int = 0) -> Extent:
    return Extent(offset, length, EXTENT_DATA, piece, piece_offset)


def test_the_same_bytes_cut_into_other_extents_do_not_differ() -> None:
    one = [data(0, 400, P)]
    cut = [data(0, 150, P), data(150, 250, P, 150)]
    assert _differing_blocks(one, cut, BLOCK) == []
    # Zeros in any form read alike.
    holes = [Extent(0, 200, EXTENT_ZERO), Extent(200, 200, EXTENT_UNALLOCATED)]
    assert _differing_blocks(holes, [Extent(0, 400, EXTENT_UNALLOCATED)], BLOCK) == []


def test_each_block_a_different_byte_touches_is_named_once() -> None:
    old = [data(0, 400, P)]
    shifted = [data(0, 400, P, 1)]  # the same piece read one byte further: every byte differs
    assert _differing_blocks(shifted, old, BLOCK) == [0, 1, 2, 3]
    new = [data(0, 150, P), data(150, 10, Q), data(160, 240, P, 160)]
    assert _differing_blocks(new, old, BLOCK) == [1]
    spans = [data(0, 50, P), data(250, 150, P, 250)]  # holes punched at 50..250
    assert _differing_blocks(spans, old, BLOCK) == [0, 1, 2]
    assert _differing_blocks(old, spans, BLOCK) == [0, 1, 2]
    assert _differing_blocks([data(399, 1, Q)], [], BLOCK) == [3]
