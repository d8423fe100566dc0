"""Byte ranges: validation, grid splitting, hole detection and chain resolution."""

from __future__ import annotations

import errno
import heapq
import os
from collections.abc import Iterable, Iterator, Sequence

import blake3

from ..errors import ChangedRangesError
from .format import EXTENT_DATA, Extent

Range = tuple[int, int]  # (offset, length)


def checked_ranges(
    ranges: Iterable[Range], capacity: int, what: str = "changed ranges"
) -> Iterator[Range]:
    """Pass ranges through, failing loudly on anything a backup must not trust.

    Ranges must be strictly increasing, never overlapping, of positive size, and inside the
    volume. Adjacent ranges are merged.
    """
    pending: Range | None = None
    last_end = -1
    for offset, length in ranges:
        if not isinstance(offset, int) or not isinstance(length, int):
            raise ChangedRangesError(f"{what}: offset and size must be integers")
        if length <= 0:
            raise ChangedRangesError(f"{what}: range at {offset} has size {length} (must be > 0)")
        if offset < 0:
            raise ChangedRangesError(f"{what}: negative offset {offset}")
        if offset < last_end:
            raise ChangedRangesError(
                f"{what}: range at {offset} is out of order or overlaps the previous one (ends at {last_end})"
            )
        if offset + length > capacity:
            raise ChangedRangesError(
                f"{what}: range {offset}+{length} goes beyond the volume capacity {capacity}"
            )
        last_end = offset + length
        if pending is not None and pending[0] + pending[1] == offset:
            pending = (pending[0], pending[1] + length)
            continue
        if pending is not None:
            yield pending
        pending = (offset, length)
    if pending is not None:
        yield pending


def split_on_grid(ranges: Iterable[Range], grid: int) -> Iterator[Range]:
    """Cut ranges at every multiple of ``grid``: each result lies inside one grid cell."""
    for offset, length in ranges:
        end = offset + length
        while offset < end:
            cell_end = (offset // grid + 1) * grid
            stop = min(end, cell_end)
            yield offset, stop - offset
            offset = stop


def allocated_ranges(fd: int, size: int) -> Iterator[Range]:
    """The data ranges of a file (SEEK_DATA/SEEK_HOLE); the whole size where unsupported."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size - offset
                return
            raise
        if start >= size:
            return
        try:
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError:
            end = size
        end = min(end, size)
        yield start, end - start
        offset = end


def subtract(ranges: Sequence[Range], minus: Sequence[Range]) -> Iterator[Range]:
    """``ranges`` without ``minus``; both sorted and non-overlapping."""
    j = 0
    for offset, length in ranges:
        start, end = offset, offset + length
        while j < len(minus) and minus[j][0] + minus[j][1] <= start:
            j += 1
        k = j
        while start < end:
            if k >= len(minus) or minus[k][0] >= end:
                yield start, end - start
                break
            m_start, m_end = minus[k][0], minus[k][0] + minus[k][1]
            if m_start > start:
                yield start, m_start - start
            start = max(start, m_end)
            k += 1


def resolve_chain(maps: Sequence[Sequence[Extent]]) -> list[Extent]:
    """Merge extent maps, newest first, into the one map a restore reads.

    Each byte comes from the newest map whose extents cover it. One sweep over the maps'
    extents in offset order, with the extents that cover the sweep's position in a heap by
    age: O(N log N) for N extents in all, whatever the chain's depth (a chain of many
    scattered incrementals would otherwise cost its depth times its extents).
    """
    if len(maps) == 1:
        return sorted(maps[0], key=lambda e: e.offset)
    starts = [
        (e.offset, depth, e.offset + e.length, e)
        for depth, extents in enumerate(maps)
        for e in extents
        if e.length
    ]
    starts.sort(key=_offset_then_depth)
    push, pop = heapq.heappush, heapq.heappop
    out: list[Extent] = []
    # Entries (depth, offset, end, extent): the newest covering extent is on top; an entry
    # that ends at or before the sweep's position is dropped when it comes to the top.
    active: list[tuple[int, int, int, Extent]] = []
    winner: tuple[int, int, int, Extent] | None = None  # what the output reads at ``position``
    won_from = 0  # where ``winner`` started to win
    i, n = 0, len(starts)
    position = starts[0][0] if starts else 0
    while i < n or active:
        while i < n and starts[i][0] <= position:
            offset, depth, stop, e = starts[i]
            push(active, (depth, offset, stop, e))
            i += 1
        while active and active[0][2] <= position:
            pop(active)
        top = active[0] if active else None
        if top is not winner:
            if winner is not None and won_from < position:
                out.append(_slice(winner[3], won_from, position))
            winner, won_from = top, position
        if winner is None:
            if i >= n:
                break
            position = starts[i][0]
            continue
        # The winner changes only where it ends or where another extent starts.
        position = winner[2]
        if i < n and starts[i][0] < position:
            position = starts[i][0]
    return out


def _offset_then_depth(item: tuple[int, int, int, Extent]) -> tuple[int, int]:
    return item[0], item[1]


def _slice(e: Extent, start: int, end: int) -> Extent:
    if start == e.offset and end == e.offset + e.length:
        return e
    piece_offset = e.piece_offset + (start - e.offset) if e.kind == EXTENT_DATA else 0
    return Extent(start, end - start, e.kind, e.piece_id, piece_offset)


def image_digest(capacity: int, resolved: Sequence[Extent]) -> str:
    """A hash over the resolved map: which piece bytes sit where; everything else is zero.

    Adjacent slices of one piece are joined first, so equal content addressed the same way
    gives the same digest however the chain happened to cut it.
    """
    h = blake3.blake3()
    h.update(b"lamina-image-v1\0" + capacity.to_bytes(8, "little"))
    run: list[int] | None = None  # offset, length, piece_offset
    run_piece = b""
    for e in resolved:
        if e.kind != EXTENT_DATA:
            continue
        if (
            run is not None
            and run_piece == e.piece_id
            and run[0] + run[1] == e.offset
            and run[2] + run[1] == e.piece_offset
        ):
            run[1] += e.length
            continue
        if run is not None:
            _digest_run(h, run, run_piece)
        run, run_piece = [e.offset, e.length, e.piece_offset], e.piece_id
    if run is not None:
        _digest_run(h, run, run_piece)
    return "blake3:" + h.hexdigest()


def _digest_run(h: blake3.blake3, run: list[int], piece_id: bytes) -> None:
    h.update(run[0].to_bytes(8, "little") + run[1].to_bytes(8, "little"))
    h.update(run[2].to_bytes(8, "little") + piece_id)
