"""Block scans and the local cluster's snapshots, checked against a block-by-block model."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.backend.cbt.scan import (
    BLOCK_SIZE,
    CHUNK_SIZE,
    allocated_runs,
    block_aligned,
    changed_runs,
    union,
)
from lamina.backend.cbt.server import fixed_tuples, variable_tuples
from lamina.backend.errors import SourceError, UsageError
from lamina.backend.local import LocalCluster, SnapshotExists, SnapshotNotFound

MiB = 1024 * 1024


def blocks_of(runs: list[tuple[int, int]]) -> list[int]:
    return [
        o // BLOCK_SIZE
        for offset, length in runs
        for o in range(offset, offset + length, BLOCK_SIZE)
    ]


def model_allocated(path: Path, capacity: int) -> list[int]:
    data = path.read_bytes().ljust(capacity, b"\0")[:capacity]
    return [
        i // BLOCK_SIZE
        for i in range(0, capacity, BLOCK_SIZE)
        if data[i : i + BLOCK_SIZE].strip(b"\0")
    ]


def model_changed(base: Path, target: Path, capacity: int) -> list[int]:
    a = base.read_bytes().ljust(capacity, b"\0")[:capacity]
    b = target.read_bytes().ljust(capacity, b"\0")[:capacity]
    return [
        i // BLOCK_SIZE
        for i in range(0, capacity, BLOCK_SIZE)
        if a[i : i + BLOCK_SIZE] != b[i : i + BLOCK_SIZE]
    ]


def sparse_image(path: Path, capacity: int, seed: int, writes: int = 20) -> Path:
    """Holes, random data, written zeros, and runs that cross the 4 MiB scan chunks."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(capacity)
        for i in range(writes):
            length = rng.choice([1, 100, BLOCK_SIZE, 3 * BLOCK_SIZE + 7, 300 * 1024])
            offset = rng.randrange(0, capacity - length)
            f.seek(offset)
            f.write(bytes(length) if i % 5 == 0 else rng.randbytes(length))
        f.seek(CHUNK_SIZE - BLOCK_SIZE)  # one run across the first chunk boundary
        f.write(rng.randbytes(2 * BLOCK_SIZE))
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_allocated_runs_are_exactly_the_nonzero_blocks(tmp_path: Path, seed: int) -> None:
    capacity = 9 * MiB + 3 * BLOCK_SIZE
    image = sparse_image(tmp_path / "a.img", capacity, seed)
    fd = os.open(image, os.O_RDONLY)
    try:
        runs = list(allocated_runs(fd, capacity))
        assert blocks_of(runs) == model_allocated(image, capacity)
        assert blocks_of(runs)  # the image is not empty, so the check above saw blocks
        start = CHUNK_SIZE - 100
        later = list(allocated_runs(fd, capacity, start))
        expected = [b for b in model_allocated(image, capacity) if (b + 1) * BLOCK_SIZE > start]
        assert blocks_of(later) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("seed", [4, 5])
def test_changed_runs_are_exactly_the_differing_blocks(tmp_path: Path, seed: int) -> None:
    capacity = 9 * MiB
    base = sparse_image(tmp_path / "base.img", capacity, seed)
    target = tmp_path / "target.img"
    target.write_bytes(base.read_bytes())
    rng = random.Random(seed)
    with open(target, "r+b") as f:
        for _ in range(15):
            f.seek(rng.randrange(0, capacity - 10))
            f.write(rng.randbytes(rng.choice([1, 10])))
        f.seek(2 * CHUNK_SIZE - 1)  # one byte each side of a chunk boundary
        f.write(b"\x01\x02")
    base_fd, target_fd = os.open(base, os.O_RDONLY), os.open(target, os.O_RDONLY)
    try:
        runs = list(changed_runs(base_fd, capacity, target_fd, capacity, capacity))
        expected = model_changed(base, target, capacity)
        assert blocks_of(runs) == expected and expected
        assert list(changed_runs(base_fd, capacity, base_fd, capacity, capacity)) == []
    finally:
        os.close(base_fd)
        os.close(target_fd)


def test_changed_runs_treat_a_shorter_base_as_zeros(tmp_path: Path) -> None:
    capacity = 2 * MiB
    base = tmp_path / "base.img"
    base.write_bytes(b"\x07" * (MiB + 10))
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(capacity)
        f.write(b"\x07" * MiB)
        f.seek(capacity - 1)
        f.write(b"\x09")
    base_fd, target_fd = os.open(base, os.O_RDONLY), os.open(target, os.O_RDONLY)
    try:
        runs = list(changed_runs(base_fd, os.path.getsize(base), target_fd, capacity, capacity))
    finally:
        os.close(base_fd)
        os.close(target_fd)
    assert runs == [(MiB, BLOCK_SIZE), (capacity - BLOCK_SIZE, BLOCK_SIZE)]


range_lists = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 50)), max_size=12).map(
    lambda items: sorted(items)
)


def _cover(ranges: list[tuple[int, int]]) -> set[int]:
    return {b for o, n in ranges for b in range(o, o + n)}


def _disjoint_sorted(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o, n in ranges:
        if out and o <= out[-1][0] + out[-1][1]:
            continue
        out.append((o, n))
    return out


@settings(max_examples=200, deadline=None)
@given(range_lists, range_lists)
def test_union_covers_both_and_is_merged(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    a, b = _disjoint_sorted(a), _disjoint_sorted(b)
    merged = list(union(a, b))
    assert _cover(merged) == _cover(a) | _cover(b)
    for (o1, n1), (o2, _) in itertools.pairwise(merged):
        assert o1 + n1 < o2  # sorted, not overlapping, not even touching


@settings(max_examples=200, deadline=None)
@given(range_lists, st.integers(0, 300), st.integers(0, 300))
def test_block_aligned_widens_to_whole_blocks_inside_the_window(
    ranges: list[tuple[int, int]], start: int, end: int
) -> None:
    ranges = _disjoint_sorted(ranges)
    block = BLOCK_SIZE
    scaled = [(o * 1000, n * 1000) for o, n in ranges]
    lo, hi = start * 1000, end * 1000
    aligned = list(block_aligned(scaled, lo, hi))
    expected_blocks = {
        b
        for o, n in scaled
        for b in range(o // block, -(-(o + n) // block))
        if max(lo, b * block) < min(hi, (b + 1) * block)
    }
    got_bytes = _cover(aligned)
    assert {x // block for x in got_bytes} == expected_blocks
    assert all(lo <= o and o + n <= hi for o, n in aligned)


def test_fixed_and_variable_tuples() -> None:
    runs = [(0, 3 * BLOCK_SIZE), (3 * BLOCK_SIZE, BLOCK_SIZE), (10 * BLOCK_SIZE, 2 * BLOCK_SIZE)]
    assert list(fixed_tuples(runs)) == [(i * BLOCK_SIZE, BLOCK_SIZE) for i in (0, 1, 2, 3, 10, 11)]
    assert list(variable_tuples(runs)) == [(0, 4 * BLOCK_SIZE), (10 * BLOCK_SIZE, 2 * BLOCK_SIZE)]
    capped = list(variable_tuples(runs, max_extent=3 * BLOCK_SIZE))
    assert capped == [
        (0, 3 * BLOCK_SIZE),
        (3 * BLOCK_SIZE, BLOCK_SIZE),
        (10 * BLOCK_SIZE, 2 * BLOCK_SIZE),
    ]


# ------------------------------------------------------------------------------ local cluster


def test_snapshot_is_a_frozen_sparse_copy_found_by_name_and_handle(tmp_path: Path) -> None:
    capacity = 64 * MiB
    source = sparse_image(tmp_path / "vol.img", capacity, seed=7, writes=5)
    original = source.read_bytes()
    cluster = LocalCluster(tmp_path / "cluster")
    snap = cluster.create_snapshot(str(source), "apps", "db-1")
    assert snap.size == capacity and snap.namespace == "apps" and snap.name == "db-1"
    assert snap.copy_method in ("reflink", "sparse copy")
    with open(source, "r+b") as f:  # the volume moves on; the snapshot must not
        f.write(b"changed")
    assert snap.image.read_bytes() == original
    if snap.copy_method == "sparse copy":
        # Holes stay holes: far less than the capacity is allocated.
        assert os.stat(snap.image).st_blocks * 512 < 8 * MiB
    assert cluster.snapshot_by_handle(snap.handle) == snap
    assert cluster.snapshot("apps", "db-1") == snap
    meta = json.loads((tmp_path / "cluster/snapshots/apps/db-1/meta.json").read_text())
    assert meta["handle"] == snap.handle and meta["size"] == capacity
    assert meta["source"] == os.path.realpath(source)
    second = cluster.create_snapshot(str(source), "apps", "db-2")
    assert second.handle != snap.handle
    assert [s.name for s in cluster.list_snapshots()] == ["db-1", "db-2"]
    assert second.image.read_bytes()[:7] == b"changed"


def test_snapshot_errors_are_clear(tmp_path: Path) -> None:
    source = sparse_image(tmp_path / "vol.img", MiB, seed=8, writes=2)
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.create_snapshot(str(source), "ns", "one")
    with pytest.raises(SnapshotExists, match="already exists"):
        cluster.create_snapshot(str(source), "ns", "one")
    with pytest.raises(UsageError, match="not a snapshot name"):
        cluster.create_snapshot(str(source), "ns", "../escape")
    with pytest.raises(UsageError, match="not a namespace"):
        cluster.create_snapshot(str(source), "Bad_NS", "two")
    with pytest.raises(SourceError, match="does not exist"):
        cluster.create_snapshot(str(tmp_path / "missing.img"), "ns", "two")
    with pytest.raises(SnapshotNotFound):
        cluster.snapshot("ns", "two")
    with pytest.raises(SnapshotNotFound):
        cluster.snapshot_by_handle("no-such-handle")
    with pytest.raises(SnapshotNotFound):
        cluster.snapshot_by_handle("../../etc/passwd")
    # Nothing half-made is left behind by the failed attempts.
    assert sorted(p.name for p in (tmp_path / "cluster/snapshots/ns").iterdir()) == ["one"]
