"""Lazy random access to a point's volume: the reader under FUSE and file extraction."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lamina.backend.service import ImageReadError, JobState, Service, init_repository
from tests.support.volumes import make_volume, scribble

MiB = 1024 * 1024


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Service, list[tuple[str, bytes]]]:
    """A repository with a three-point chain, and the volume bytes of each point."""
    init_repository(str(tmp_path / "repo"), grid_size=256 * 1024)
    service = Service(str(tmp_path / "repo"))
    vol = make_volume(tmp_path / "vol.img", 16 * MiB, seed=11)
    points = []
    for step in range(3):
        changed = None if step == 0 else scribble(vol, 30, 4096 * (step + 1), seed=step)
        job = service.start_backup(str(vol), "v", changed_ranges=changed)
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
        points.append((job.result.id, vol.read_bytes()))
    return service, points


def test_random_reads_match_every_point(chain: tuple[Service, list[tuple[str, bytes]]]) -> None:
    service, points = chain
    rng = random.Random(5)
    for point_id, expected in points:
        with service.open_image(point_id, cache_bytes=2 * MiB) as image:
            assert image.size == len(expected)
            for _ in range(300):
                offset = rng.randrange(0, image.size)
                length = rng.choice([1, 511, 4096, 131072, 3 * MiB])
                assert image.pread(length, offset) == expected[offset : offset + length]
            assert image.pread(10, image.size) == b""
            assert image.pread(100, image.size - 10) == expected[-10:]


def test_sequential_read_reads_ahead_and_holes_cost_nothing(
    chain: tuple[Service, list[tuple[str, bytes]]],
) -> None:
    service, points = chain
    point_id, expected = points[-1]
    with service.open_image(point_id) as image:
        out = bytearray()
        for offset in range(0, image.size, 131072):
            out += image.pread(131072, offset)
        assert bytes(out) == expected
        assert image.cache_hits > 0  # read-ahead had the pieces ready
    with service.open_image(point_id, readahead_bytes=0) as image:
        holes = [
            o
            for o in range(4096, len(expected) - 65536, 65536)
            if expected[o : o + 65536] == bytes(65536)
        ]
        assert holes
        before = service.repo.counter.requests
        for hole in holes[:20]:
            assert image.pread(65536, hole) == bytes(65536)
        assert service.repo.counter.requests == before  # zeros cost no request


def test_corrupt_piece_fails_only_its_range(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"), grid_size=1 * MiB)
    service = Service(str(tmp_path / "repo"))
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(8 * MiB))
    job = service.start_backup(str(vol), "v")
    job.wait()
    point_id = job.result.id
    # The first piece of every pack (volume bytes 0 .. 1 MiB in the first one; an 8 MiB
    # backup writes 4 MiB packs) gets a flipped byte; the third piece stays whole.
    for pack in (p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()):
        data = bytearray(pack.read_bytes())
        data[10] ^= 0xFF
        pack.write_bytes(bytes(data))
    expected = vol.read_bytes()
    with Service(str(tmp_path / "repo")).open_image(point_id, readahead_bytes=0) as image:
        with pytest.raises(ImageReadError) as err:
            image.pread(4096, 4096)
        assert err.value.offset == 4096 and "volume offset 4096" in str(err.value)
        assert image.pread(4096, 2 * MiB) == expected[2 * MiB : 2 * MiB + 4096]
