"""Fingerprint runs: resolution through a chain and the object body."""

from __future__ import annotations

import os

import pytest

from lamina.backend.engine.fingerprints import (
    UNKNOWN,
    Fingerprints,
    Run,
    decode_body,
    encode_body,
    resolve_fingerprints,
    touched_runs,
)
from lamina.backend.engine.format import EXTENT_UNALLOCATED, Extent
from lamina.backend.errors import CorruptObject

BLOCK = 64 * 1024


def hashes(count: int) -> bytes:
    return os.urandom(16 * count)


def test_the_newest_listing_wins_and_unknown_hides_older_hashes() -> None:
    oldest = Run(0, 10, hashes(10))
    middle = touched_runs([Extent(2 * BLOCK, BLOCK + 1, EXTENT_UNALLOCATED)], BLOCK)
    newest = Run(8, 4, hashes(4))
    resolved = resolve_fingerprints(BLOCK, [[newest], middle, [oldest]])
    assert middle == [Run(2, 2, None)]
    assert resolved.lookup(0) == oldest.hash_at(0)
    assert resolved.lookup(2) == resolved.lookup(3) == UNKNOWN
    assert resolved.lookup(4) == oldest.hash_at(4)
    assert resolved.lookup(8) == newest.hash_at(8) != oldest.hash_at(8)
    assert resolved.lookup(11) == newest.hash_at(11)
    assert resolved.lookup(12) is None  # nothing lists it: it reads as zeros


def test_the_body_round_trips_and_refuses_damage() -> None:
    fingerprints = Fingerprints(
        BLOCK, [Run(0, 3, hashes(3)), Run(5, 2, None), Run(9, 1, hashes(1))]
    )
    body = encode_body(fingerprints, 10 * BLOCK)
    capacity, back = decode_body(body, "fingerprints")
    assert capacity == 10 * BLOCK and back.runs == fingerprints.runs
    for damaged in (body[:-1], body + b"x", body[:30]):
        with pytest.raises(CorruptObject):
            decode_body(damaged, "fingerprints")
    with pytest.raises(CorruptObject):  # a run beyond the capacity
        decode_body(encode_body(fingerprints, 9 * BLOCK), "fingerprints")
