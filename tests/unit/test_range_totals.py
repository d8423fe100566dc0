"""A streamed range list is counted up front when it is short enough to hold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lamina.backend.engine.pipelines import RANGES_FOR_A_TOTAL, _with_total
from lamina.backend.errors import Cancelled


def stream(count: int) -> Iterator[tuple[int, int]]:
    return ((i * 8192, 4096) for i in range(count))


def test_a_short_stream_gets_its_total() -> None:
    ranges, total = _with_total(stream(1000))
    assert total == 1000 * 4096 and list(ranges) == list(stream(1000))


def test_a_long_stream_streams_on_without_a_total() -> None:
    count = RANGES_FOR_A_TOTAL + 5
    ranges, total = _with_total(stream(count))
    assert total is None
    assert sum(1 for _ in ranges) == count  # nothing lost between the head and the rest


def test_a_cancel_stops_the_listing() -> None:
    with pytest.raises(Cancelled):
        _with_total(stream(RANGES_FOR_A_TOTAL), lambda: True)
