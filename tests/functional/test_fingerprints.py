"""Sub-cell fingerprints: scan incrementals store only the blocks that changed, and every point
of a chain mixing changed-range, scan, consolidated and deleted points restores exactly."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import random
import tempfile
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.backend.engine.fingerprints import FINGERPRINT_SIZE
from lamina.backend.engine.pipelines import BackupRequest, VolumeRef
from lamina.backend.engine.pipelines import backup as engine_backup
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage import open_storage
from lamina.backend.engine.storage.local import LocalStorage
from lamina.backend.service import JobState, PointInfo, Service, init_repository

KiB = 1024
MiB = 1024 * KiB
GRID = 64 * KiB
BLOCK = 16 * KiB
# Not a multiple of the block: the last block is short.
CAPACITY = 17 * GRID + 8 * KiB


def run(job: object) -> object:
    assert job.wait(300)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    return job.result  # type: ignore[attr-defined]


def backup(service: Service, path: Path, **kw: object) -> PointInfo:
    point = run(service.start_backup(str(path), "vol", **kw))  # type: ignore[arg-type]
    assert isinstance(point, PointInfo)
    return point


def image_of(service: Service, point_id: str) -> bytes:
    with service.open_image(point_id, readahead_bytes=0) as image:
        return image.pread(image.size, 0)


def changed_blocks_bytes(old: bytes, new: bytes, block: int) -> int:
    """The true change rounded out to whole fingerprint blocks."""
    total = 0
    for start in range(0, len(new), block):
        if old[start : start + block] != new[start : start + block]:
            total += len(new[start : start + block])
    return total


def stored_extent_bytes(point: PointInfo) -> int:
    """What a point wrote as data: new pieces and pieces it found in the repository."""
    return int(point.stats["bytes_new"]) + int(point.stats["bytes_deduplicated"])


def punch_hole(path: Path, offset: int, length: int) -> None:
    """A real hole (fallocate PUNCH_HOLE) where the filesystem can; zeros otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    punch_keep_size = 0x02 | 0x01
    with open(path, "r+b") as f:
        done = libc.fallocate(
            f.fileno(), punch_keep_size, ctypes.c_long(offset), ctypes.c_long(length)
        )
        if done != 0:
            f.seek(offset)
            f.write(bytes(length))


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges covering ``ranges``."""
    out: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], offset + length)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((offset, length))
    return out


def read(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------------- model test

writes = st.lists(
    st.one_of(
        # random bytes anywhere: aligned or not, inside a block or across blocks and cells
        st.tuples(
            st.just("write"),
            st.integers(0, CAPACITY - 1),
            st.integers(1, 3 * GRID),
            st.integers(0, 2**32),
        ),
        st.tuples(st.just("zeros"), st.integers(0, CAPACITY - 1), st.integers(1, GRID), st.just(0)),
        st.tuples(
            st.just("punch"), st.integers(0, CAPACITY // 4096 - 1), st.integers(1, 40), st.just(0)
        ),
        # the tail becomes one run of zeros (a hole), down to the whole image
        st.tuples(st.just("shrink"), st.integers(0, CAPACITY), st.just(0), st.just(0)),
        st.tuples(st.just("backup"), st.just(0), st.just(0), st.just(0)),
        # a changed-ranges backup given exactly the ranges written since the last backup
        st.tuples(st.just("backup-cbt"), st.just(0), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=int(os.environ.get("LAMINA_MODEL_EXAMPLES", "20")),  # longer runs on request
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=writes, encrypted=st.booleans())
def test_scan_incrementals_restore_every_point_and_store_only_changed_blocks(
    steps: list[tuple[str, int, int, int]], encrypted: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        password = b"model" if encrypted else None
        init_repository(
            str(root / "repo"), grid_size=GRID, fingerprint_block=BLOCK, password=password
        )
        service = Service(str(root / "repo"), password=password)
        vol = root / "vol.img"
        rng = random.Random(7)
        with open(vol, "wb") as f:
            f.truncate(CAPACITY)
            for _ in range(6):
                f.seek(rng.randrange(CAPACITY - 40 * KiB))
                f.write(rng.randbytes(rng.randrange(1, 40 * KiB)))
        expected: dict[str, bytes] = {}
        point = backup(service, vol)
        expected[point.id] = read(vol)
        previous = expected[point.id]
        written: list[tuple[int, int]] = []
        for op, a, b, seed in [*steps, ("backup", 0, 0, 0)]:
            if op == "write":
                length = min(b, CAPACITY - a)
                with open(vol, "r+b") as f:
                    f.seek(a)
                    f.write(random.Random(seed).randbytes(length))
                written.append((a, length))
            elif op == "zeros":
                with open(vol, "r+b") as f:
                    f.seek(a)
                    f.write(bytes(min(b, CAPACITY - a)))
                written.append((a, min(b, CAPACITY - a)))
            elif op == "punch":
                punch_hole(vol, a * 4096, min(b * 4096, CAPACITY - a * 4096))
                written.append((a * 4096, min(b * 4096, CAPACITY - a * 4096)))
            elif op == "shrink":
                os.truncate(vol, a)
                os.truncate(vol, CAPACITY)
                if a < CAPACITY:
                    written.append((a, CAPACITY - a))
            elif op == "backup-cbt":
                ranges = merged(written)
                if not ranges:
                    continue
                point = backup(service, vol, changed_ranges=ranges)
                assert point.parent is not None and point.stats["bytes_read"] == sum(
                    n for _, n in ranges
                )
                expected[point.id] = previous = read(vol)
                written = []
            else:
                point = backup(service, vol)
                assert point.parent is not None
                now = read(vol)
                # Stored data stays within the fingerprint-block rounding of the true change.
                assert stored_extent_bytes(point) <= changed_blocks_bytes(previous, now, BLOCK)
                expected[point.id] = previous = now
                written = []
        for point_id, data in expected.items():
            assert image_of(service, point_id) == data, f"point {point_id} differs"
        report = run(service.start_verify(deep=True))
        assert report.ok, report.problems  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- chains


def scattered_writes(path: Path, count: int, size: int, seed: int) -> list[tuple[int, int]]:
    """``count`` scattered writes of random bytes at 4 KiB-aligned places; the ranges."""
    rng = random.Random(seed)
    capacity = os.path.getsize(path)
    offsets = sorted(set(rng.randrange((capacity - size) // 4096) * 4096 for _ in range(count)))
    ranges: list[tuple[int, int]] = []
    with open(path, "r+b") as f:
        for o in offsets:
            if ranges and ranges[-1][0] + ranges[-1][1] > o:
                continue
            f.seek(o)
            f.write(rng.randbytes(size))
            ranges.append((o, size))
    return ranges


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_chain_mixing_cbt_scan_consolidate_and_delete_resolves_correctly(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "repo") if where == "local" else request.getfixturevalue("s3_repo_url")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK)
    service = Service(url)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(1).randbytes(4 * MiB))
    expected: dict[str, bytes] = {}
    points: list[PointInfo] = []

    def take(point: PointInfo) -> PointInfo:
        expected[point.id] = read(vol)
        points.append(point)
        return point

    def scan(seed: int) -> PointInfo:
        before = read(vol)
        scattered_writes(vol, 12, 6 * KiB, seed)
        point = take(backup(service, vol))
        assert point.parent is not None
        assert stored_extent_bytes(point) <= changed_blocks_bytes(before, read(vol), BLOCK)
        assert any("fingerprint differs" in n for n in point.notes), point.notes
        return point

    take(backup(service, vol))
    take(backup(service, vol, changed_ranges=scattered_writes(vol, 10, 5 * KiB, 2)))
    scan(3)
    take(backup(service, vol, changed_ranges=scattered_writes(vol, 10, 20 * KiB, 4)))
    scan(5)
    # Fold the changed-ranges point and its ancestors into the newest scan point ...
    run(service.start_consolidate(points[3].id))
    scan(6)
    # ... delete a point in the middle (its child absorbs it) ...
    run(service.start_delete(points[2].id))
    del expected[points[2].id]
    scan(7)
    # ... and prune: the fingerprints of every remaining point survive it.
    run(service.start_prune())
    scan(8)
    take(backup(service, vol, changed_ranges=scattered_writes(vol, 4, 64 * KiB, 9)))
    scan(10)
    run(service.start_consolidate(points[-1].id))
    scan(11)

    fresh = Service(url)
    for point_id, data in expected.items():
        assert image_of(fresh, point_id) == data, f"point {point_id} differs"
    report = run(fresh.start_verify(deep=True))
    assert report.ok, report.problems  # type: ignore[attr-defined]
    # Every fingerprint object on disk is one a manifest names, after a last prune.
    run(fresh.start_prune())
    repo = Repository.open(open_storage(url))
    named = {p.fingerprints_key for p in repo.list_points()}
    on_disk = {i.key for i in repo.storage.list("maps/") if i.key.endswith(".fp")}
    assert None not in named and on_disk == named


def test_encrypted_fingerprints_differ_from_unkeyed_hashes(tmp_path: Path) -> None:
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(2).randbytes(MiB))
    found: dict[str, list[tuple[int, bytes]]] = {}
    for name, password in (("plain", None), ("encrypted", b"secret")):
        url = str(tmp_path / name)
        init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK, password=password)
        backup(Service(url, password=password), vol)
        repo = Repository.open(open_storage(url), password=password)
        (point,) = repo.list_points()
        fingerprints = repo.load_fingerprints(point)
        assert fingerprints is not None
        found[name] = list(fingerprints.items())
    data = read(vol)
    unkeyed = [
        blake3.blake3(data[b * BLOCK : (b + 1) * BLOCK]).digest()[:FINGERPRINT_SIZE]
        for b in range(MiB // BLOCK)
    ]
    assert [h for _, h in found["plain"]] == unkeyed
    assert [b for b, _ in found["encrypted"]] == list(range(MiB // BLOCK))
    assert not {h for _, h in found["encrypted"]} & set(unkeyed)


@pytest.mark.parametrize("password", [None, b"secret"], ids=["plain", "encrypted"])
def test_whole_block_changed_ranges_record_the_blocks_true_hashes(
    tmp_path: Path, password: bytes | None
) -> None:
    """A changed range that is exactly one block is one piece: unkeyed, its fingerprint is
    taken from the piece id. It must equal the block's own hash, keyed or not, so a scan
    after it finds nothing changed."""
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK, password=password)
    service = Service(url, password=password)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(3).randbytes(MiB))
    backup(service, vol)
    rng = random.Random(4)
    blocks = sorted(rng.sample(range(MiB // BLOCK), 5))
    with open(vol, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK))
    cbt = backup(service, vol, changed_ranges=[(b * BLOCK, BLOCK) for b in blocks])
    repo = Repository.open(open_storage(url), password=password)
    fingerprints = repo.load_fingerprints(repo.find_point(cbt.id))
    assert fingerprints is not None and repo.fingerprinter is not None
    data = read(vol)
    assert [b for b, _ in fingerprints.items()] == blocks
    assert [h for _, h in fingerprints.items()] == [
        repo.fingerprinter.of(data[b * BLOCK : (b + 1) * BLOCK]) for b in blocks
    ]
    scan = backup(service, vol)
    assert scan.stats["bytes_new"] == 0 and scan.stats["bytes_unchanged"] == MiB
    assert image_of(service, scan.id) == data


def test_fingerprints_cost_a_small_share_of_the_data(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url)  # the defaults: 4 MiB grid, 64 KiB fingerprint blocks
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(3).randbytes(16 * MiB))
    backup(Service(url), vol)
    (fp_file,) = (tmp_path / "repo" / "maps").glob("*.fp")
    assert fp_file.stat().st_size <= 0.0005 * 16 * MiB


def test_points_without_fingerprints_fall_back_to_cell_hashes(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(4).randbytes(4 * MiB))
    old = backup(Service(url), vol)
    # As a lamina from before fingerprints would have written it: no field, no object.
    manifest_path = tmp_path / "repo" / "manifests" / old.id
    manifest = json.loads(manifest_path.read_text())
    (tmp_path / "repo" / manifest.pop("fingerprints")).unlink()
    manifest_path.write_text(json.dumps(manifest))
    before = read(vol)
    scattered_writes(vol, 3, 4 * KiB, 5)
    service = Service(url)
    point = backup(service, vol)
    # Unchanged cells are recognised by their piece hashes; changed ones are stored whole.
    assert point.stats["bytes_unchanged"] >= 4 * MiB - 3 * 2 * 256 * KiB
    assert image_of(service, point.id) == read(vol) != before
    # The new point has fingerprints: the next scan stores blocks, not cells.
    before = read(vol)
    scattered_writes(vol, 3, 4 * KiB, 6)
    point = backup(service, vol)
    assert stored_extent_bytes(point) <= changed_blocks_bytes(before, read(vol), BLOCK)
    assert image_of(service, point.id) == read(vol)


def test_a_repository_without_the_config_field_keeps_no_fingerprints(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB)
    config_path = tmp_path / "repo" / "config"
    config = json.loads(config_path.read_text())
    del config["fingerprint_block"]  # a repository made before fingerprints
    config_path.write_text(json.dumps(config))
    service = Service(url)
    assert service.info().fingerprint_block == 0
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(5).randbytes(2 * MiB))
    backup(service, vol)
    scattered_writes(vol, 2, 4 * KiB, 6)
    point = backup(service, vol)
    assert any("grid cells whose hash differs" in n for n in point.notes)
    assert point.stats["bytes_new"] <= 2 * 2 * 256 * KiB
    assert image_of(service, point.id) == read(vol)
    assert not list((tmp_path / "repo" / "maps").glob("*.fp"))


def test_fingerprints_record_what_a_point_reads_not_what_the_source_holds(
    tmp_path: Path,
) -> None:
    """Allocated ranges (from CBT) may leave out bytes the source still holds: the point reads
    zeros there, so its fingerprints must say zeros, or a later scan would skip real data."""
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK)
    service = Service(url)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(6).randbytes(MiB))
    data = read(vol)
    full = backup(service, vol, allocated_ranges=lambda: [(0, 100 * KiB)])
    assert image_of(service, full.id) == data[: 100 * KiB] + bytes(MiB - 100 * KiB)
    point = backup(service, vol, allocated_ranges=lambda: [(0, 200 * KiB)])
    assert image_of(service, point.id) == data[: 200 * KiB] + bytes(MiB - 200 * KiB)


def test_a_corrupt_fingerprint_object_is_reported_and_never_trusted(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK)
    service = Service(url)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(8).randbytes(2 * MiB))
    full = backup(service, vol)
    (fp_file,) = (tmp_path / "repo" / "maps").glob("*.fp")
    damaged = bytearray(fp_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    fp_file.write_bytes(bytes(damaged))
    report = run(service.start_verify())
    assert any(full.id in p and "fingerprints" in p for p in report.problems)  # type: ignore[attr-defined]
    scattered_writes(vol, 3, 4 * KiB, 9)
    point = backup(service, vol)
    assert image_of(service, point.id) == read(vol)


class _RecordingStorage(LocalStorage):
    """A real local folder that remembers which objects were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return super().get(key)


def test_an_incremental_reads_each_manifest_and_map_once(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * KiB, fingerprint_block=BLOCK)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(random.Random(9).randbytes(2 * MiB))
    service = Service(url)
    backup(service, vol)
    for seed in range(4):
        backup(service, vol, changed_ranges=scattered_writes(vol, 3, 4 * KiB, seed))
    for changed in (True, False):
        storage = _RecordingStorage(tmp_path / "repo")
        repo = Repository.open(storage)
        ranges = scattered_writes(vol, 3, 4 * KiB, 20 + changed)
        request = BackupRequest(
            str(vol),
            VolumeRef.parse("vol"),
            changed_ranges=functools.partial(list, ranges) if changed else None,
        )
        engine_backup(repo, request)
        metadata = [k for k in storage.gets if k.startswith(("manifests/", "maps/"))]
        assert len(metadata) == len(set(metadata)), sorted(metadata)
