"""Finding allocated and changed blocks of snapshot images, streamed as the scan goes.

Both scans skip holes with SEEK_DATA/SEEK_HOLE, read 4 MiB at a time and compare whole
chunks first (one memcmp), looking at single blocks only inside chunks that differ. They
yield runs of blocks per chunk; a run may continue in the next chunk (callers merge).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from ..engine.extents import Range, allocated_ranges

BLOCK_SIZE = 4096
CHUNK_SIZE = 4 * 1024 * 1024

_ZERO_CHUNK = bytes(CHUNK_SIZE)
_ZERO_BLOCK = bytes(BLOCK_SIZE)


def _never() -> bool:
    return False


def _ignore(nbytes: int) -> None:
    pass


def union(first: Iterable[Range], second: Iterable[Range]) -> Iterator[Range]:
    """Merge two sorted range lists into sorted, non-overlapping, non-adjacent ranges."""
    a, b = iter(first), iter(second)
    next_a, next_b = next(a, None), next(b, None)
    pending: Range | None = None
    while next_a is not None or next_b is not None:
        if next_b is None or (next_a is not None and next_a[0] <= next_b[0]):
            assert next_a is not None
            current, next_a = next_a, next(a, None)
        else:
            current, next_b = next_b, next(b, None)
        if pending is not None and current[0] <= pending[0] + pending[1]:
            end = max(pending[0] + pending[1], current[0] + current[1])
            pending = (pending[0], end - pending[0])
            continue
        if pending is not None:
            yield pending
        pending = current
    if pending is not None:
        yield pending


def block_aligned(ranges: Iterable[Range], start: int, end: int) -> Iterator[Range]:
    """Widen sorted ranges to whole blocks, clip them to [start, end), merge what then touches."""
    pending: Range | None = None
    for offset, length in ranges:
        lo = max(start, offset // BLOCK_SIZE * BLOCK_SIZE)
        hi = min(end, -(-(offset + length) // BLOCK_SIZE) * BLOCK_SIZE)
        if hi <= lo:
            continue
        if pending is not None and lo <= pending[0] + pending[1]:
            pending = (pending[0], max(hi, pending[0] + pending[1]) - pending[0])
            continue
        if pending is not None:
            yield pending
        pending = (lo, hi - lo)
    if pending is not None:
        yield pending


def _read(fd: int, length: int, offset: int, size: int) -> bytes:
    """``length`` bytes at ``offset``; what lies past ``size`` (end of the file) reads as zeros."""
    if offset >= size:
        return _ZERO_CHUNK[:length] if length <= CHUNK_SIZE else bytes(length)
    data = os.pread(fd, min(length, size - offset), offset)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def _differing_runs(data: bytes, other: bytes, base_offset: int) -> Iterator[Range]:
    """Runs of blocks where ``data`` and ``other`` (same length) differ."""
    run_start = -1
    length = len(data)
    for at in range(0, length, BLOCK_SIZE):
        stop = min(at + BLOCK_SIZE, length)
        if data[at:stop] != other[at:stop]:
            if run_start < 0:
                run_start = at
        elif run_start >= 0:
            yield base_offset + run_start, at - run_start
            run_start = -1
    if run_start >= 0:
        yield base_offset + run_start, length - run_start


def _chunks(ranges: Iterable[Range]) -> Iterator[Range]:
    for offset, length in ranges:
        end = offset + length
        while offset < end:
            step = min(CHUNK_SIZE, end - offset)
            yield offset, step
            offset += step


def allocated_runs(
    fd: int,
    capacity: int,
    start: int = 0,
    *,
    file_size: int | None = None,
    cancelled: Callable[[], bool] = _never,
    scanned: Callable[[int], None] = _ignore,
) -> Iterator[Range]:
    """Runs of blocks of [start, capacity) that are not all zeros.

    ``scanned(n)`` is told of every ``n`` bytes read, ``cancelled()`` stops the scan early.
    """
    size = capacity if file_size is None else file_size
    begin = start // BLOCK_SIZE * BLOCK_SIZE
    data_ranges = block_aligned(allocated_ranges(fd, min(size, capacity)), begin, capacity)
    for offset, length in _chunks(data_ranges):
        if cancelled():
            return
        data = _read(fd, length, offset, size)
        scanned(length)
        if data == _ZERO_CHUNK[:length]:
            continue
        yield from _differing_runs(data, _ZERO_CHUNK[:length], offset)


def changed_runs(
    base_fd: int,
    base_size: int,
    target_fd: int,
    target_size: int,
    capacity: int,
    start: int = 0,
    *,
    cancelled: Callable[[], bool] = _never,
    scanned: Callable[[int], None] = _ignore,
) -> Iterator[Range]:
    """Runs of blocks of [start, capacity) where base and target differ.

    Holes present in both files are skipped without reading; anything past the end of a file
    reads as zeros (a base smaller than the target).
    """
    begin = start // BLOCK_SIZE * BLOCK_SIZE
    data_ranges = block_aligned(
        union(
            allocated_ranges(base_fd, min(base_size, capacity)),
            allocated_ranges(target_fd, min(target_size, capacity)),
        ),
        begin,
        capacity,
    )
    for offset, length in _chunks(data_ranges):
        if cancelled():
            return
        base = _read(base_fd, length, offset, base_size)
        target = _read(target_fd, length, offset, target_size)
        scanned(length)
        if base == target:
            continue
        yield from _differing_runs(target, base, offset)
