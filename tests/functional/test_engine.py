"""Backup, restore and verify through the service layer, on real files and a real repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.backend.errors import (
    CorruptObject,
    PasswordRequired,
    UsageError,
    WrongPassword,
)
from lamina.backend.service import (
    Job,
    JobState,
    PointInfo,
    RestoreReport,
    Service,
    TargetExists,
    init_repository,
)
from tests.support.volumes import make_volume, scribble, sha256_file, sparse_copy

MiB = 1024 * 1024


def _backup(service: Service, source: Path, volume: str = "db", **kw: object) -> PointInfo:
    job = service.start_backup(str(source), volume, **kw)  # type: ignore[arg-type]
    assert job.wait(120)
    assert job.state == JobState.SUCCEEDED, job.error
    point: PointInfo = job.result
    return point


def _restore(service: Service, point: str, target: Path) -> RestoreReport:
    job = service.start_restore(point, str(target))
    assert job.wait(120)
    assert job.state == JobState.SUCCEEDED, job.error
    assert isinstance(job.result, RestoreReport)
    return job.result


def _fail(job_starter: object) -> str:
    job = job_starter  # a Job
    assert job.wait(120)  # type: ignore[attr-defined]
    assert job.state == JobState.FAILED  # type: ignore[attr-defined]
    return str(job.error)  # type: ignore[attr-defined]


@pytest.fixture
def repo(tmp_path: Path) -> Service:
    init_repository(str(tmp_path / "repo"), grid_size=256 * 1024)
    return Service(str(tmp_path / "repo"))


def test_chain_restores_byte_identical_and_incremental_stores_only_changes(
    repo: Service, tmp_path: Path
) -> None:
    vol = make_volume(tmp_path / "vol.img", 32 * MiB)
    snaps = []
    full = _backup(repo, vol)
    snaps.append((full, sha256_file(vol)))
    assert full.kind == "full" and full.parent is None
    for step in range(3):
        changed = scribble(vol, 20, 8192, seed=step + 10)
        point = _backup(repo, vol, changed_ranges=changed)
        assert point.parent == snaps[-1][0].id
        assert point.stats["bytes_read"] == 20 * 8192
        # Incompressible data: stored about what changed, never whole grid cells.
        assert point.stats["bytes_stored"] <= 1.1 * 20 * 8192
        snaps.append((point, sha256_file(vol)))
    assert [p.id for p in repo.chain(snaps[-1][0].id)] == [p.id for p, _ in reversed(snaps)]
    for point, digest in snaps:
        out = tmp_path / f"{point.id}.img"
        result = _restore(repo, point.id, out)
        assert sha256_file(out) == digest
        assert os.path.getsize(out) == 32 * MiB
        assert result.image_digest == point.image_digest and result.digest_checked
        assert 0 < result.bytes_written <= 32 * MiB and result.pieces > 0
    job = repo.start_verify(deep=True)
    job.wait()
    assert job.result.ok, job.result.problems


def test_restored_image_is_sparse_where_the_volume_was_empty(repo: Service, tmp_path: Path) -> None:
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(5 * MiB)
        f.write(os.urandom(MiB))
    point = _backup(repo, vol)
    assert point.stats["bytes_read"] == MiB
    out = tmp_path / "out.img"
    _restore(repo, point.id, out)
    assert sha256_file(out) == sha256_file(vol)
    assert os.stat(out).st_blocks * 512 < 4 * MiB


def test_zeroed_blocks_in_an_incremental_hide_the_parent_data(
    repo: Service, tmp_path: Path
) -> None:
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(4 * MiB))
    _backup(repo, vol)
    changed = scribble(vol, 5, 4096, seed=3, zero=True)
    point = _backup(repo, vol, changed_ranges=changed)
    assert point.stats["bytes_zero"] == 5 * 4096
    out = tmp_path / "out.img"
    _restore(repo, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_backup_without_ranges_after_a_parent_uploads_only_changed_cells(
    repo: Service, tmp_path: Path
) -> None:
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(8 * MiB))
    _backup(repo, vol)
    scribble(vol, 3, 4096, seed=4)
    point = _backup(repo, vol)
    assert point.kind == "incremental"
    assert any("no changed-block ranges" in n for n in point.notes)
    assert point.stats["bytes_read"] == 8 * MiB
    assert point.stats["bytes_new"] <= 3 * 256 * 1024  # three grid cells at most
    # a hole punched where the parent had data reads back as zeros
    with open(vol, "r+b") as f:
        os.truncate(f.fileno(), 6 * MiB)
        os.truncate(f.fileno(), 8 * MiB)
    point = _backup(repo, vol)
    out = tmp_path / "out.img"
    _restore(repo, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_dedup_across_volumes(repo: Service, tmp_path: Path) -> None:
    a = make_volume(tmp_path / "a.img", 16 * MiB, seed=5)
    # the same content with the same allocation: the same pieces
    b = sparse_copy(a, tmp_path / "b.img")
    first = _backup(repo, a, "a")
    second = _backup(repo, b, "b")
    assert second.kind == "full"
    assert second.stats["bytes_new"] == 0
    assert second.stats["bytes_deduplicated"] == first.stats["bytes_new"]


def test_capacity_change_falls_back_to_full(repo: Service, tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "vol.img", 8 * MiB)
    _backup(repo, vol)
    with open(vol, "r+b") as f:
        f.truncate(12 * MiB)
    point = _backup(repo, vol, changed_ranges=[(0, 4096)])
    assert point.kind == "full"
    assert any("capacity changed" in n for n in point.notes)
    out = tmp_path / "out.img"
    _restore(repo, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_bad_changed_ranges_abort_without_a_point(repo: Service, tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "vol.img", 8 * MiB)
    _backup(repo, vol)
    before = len(repo.list_points())
    for ranges in ([(8192, 4096), (0, 4096)], [(0, 4096), (8 * MiB, 4096)], [(0, 0)]):
        error = _fail(repo.start_backup(str(vol), "db", changed_ranges=ranges))
        assert "changed ranges" in error
        assert not error.startswith("internal error"), error  # a ChangedRangesError, not a bug
    assert len(repo.list_points()) == before


def test_cancelled_backup_leaves_no_point(tmp_path: Path) -> None:
    # zstd level 19 on every piece: slow enough on any machine that the cancel lands mid-way
    from tests.support.api_server import slow_image, slow_repository

    repo = Service(slow_repository(tmp_path / "slow-repo"))
    vol = slow_image(tmp_path / "vol.img", 32 * MiB, seed=1)
    progress_seen = []

    def cancel_once_running(job: Job) -> None:
        p = job.progress
        if p is not None and p.phase == "backing up" and p.done > 0 and not job.cancel_requested:
            progress_seen.append(p.done)
            job.cancel()

    job = repo.start_backup(str(vol), "db", parent="none")
    job.subscribe(cancel_once_running)
    assert job.wait(120)
    assert job.state == JobState.CANCELLED, job.state
    assert progress_seen and progress_seen[0] < 32 * MiB
    assert "no restore point was written" in str(job.error)
    assert repo.list_points() == []
    # the repository stays usable: the next backup works and verifies
    _backup(repo, make_volume(tmp_path / "small.img", 4 * MiB))
    check = repo.start_verify(deep=True)
    check.wait()
    assert check.result.ok


def test_source_errors_are_clear(repo: Service, tmp_path: Path) -> None:
    error = _fail(repo.start_backup(str(tmp_path / "nope.img"), "db"))
    assert "does not exist" in error
    assert not error.startswith("internal error"), error  # a SourceError, not a bug
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * 4096)
    job = repo.start_backup(str(small), "db")
    job.wait()
    assert job.state == JobState.SUCCEEDED
    with pytest.raises(UsageError):
        repo.start_backup(str(small), "a/b/c/d")


def test_restore_refuses_to_overwrite_and_checks_devices(repo: Service, tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    point = _backup(repo, vol)
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    with pytest.raises(TargetExists, match="exists; choose a new file"):  # before any job
        repo.start_restore(point.id, str(out))
    assert out.read_bytes() == b"precious"
    job = repo.start_restore(point.id, str(out), overwrite=True)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    assert sha256_file(out) == sha256_file(vol)


def _packs(repo_dir: Path) -> list[Path]:
    return sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())


def test_corrupt_piece_fails_the_restore_with_its_offset(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"))
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(2 * MiB))
    point = _backup(service, vol)
    (pack,) = _packs(tmp_path / "repo")
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    out = tmp_path / "out.img"
    error = _fail(service.start_restore(point.id, str(out)))
    assert "fails its hash check" in error and "volume offset 3145728" in error
    assert not out.exists() and not Path(str(out) + ".lamina-partial").exists()
    job = Service(str(tmp_path / "repo")).start_verify(deep=True)
    job.wait()
    assert not job.result.ok and "volume offset 3145728" in job.result.problems[0]
    # quick verify only checks presence: it passes, deep does not
    job = Service(str(tmp_path / "repo")).start_verify()
    job.wait()
    assert job.result.ok


def test_missing_pack_is_reported(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"))
    vol = make_volume(tmp_path / "vol.img", 8 * MiB)
    point = _backup(service, vol)
    for pack in _packs(tmp_path / "repo"):
        pack.unlink()
    fresh = Service(str(tmp_path / "repo"))
    job = fresh.start_verify()
    job.wait()
    assert not job.result.ok and "missing" in job.result.problems[0]
    assert "missing" in _fail(fresh.start_restore(point.id, str(tmp_path / "out.img")))


def test_corrupt_manifest_and_map_are_reported(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"))
    point = _backup(service, make_volume(tmp_path / "vol.img", 4 * MiB))
    map_file = tmp_path / "repo" / "maps" / point.id
    blob = bytearray(map_file.read_bytes())
    blob[20] ^= 1
    map_file.write_bytes(bytes(blob))
    assert "checksum" in _fail(
        Service(str(tmp_path / "repo")).start_restore(point.id, str(tmp_path / "o.img"))
    )
    (tmp_path / "repo" / "manifests" / point.id).write_text("{not json")
    with pytest.raises(CorruptObject):
        Service(str(tmp_path / "repo")).list_points()


def test_encrypted_repository(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"), password=b"correct horse")
    with pytest.raises(PasswordRequired):
        Service(str(tmp_path / "repo")).list_points()
    with pytest.raises(WrongPassword):
        Service(str(tmp_path / "repo"), password=b"wrong").list_points()
    service = Service(str(tmp_path / "repo"), password=b"correct horse")
    vol = tmp_path / "vol.img"
    secret = b"TOP-SECRET-PAYLOAD" * 1000
    with open(vol, "wb") as f:
        f.truncate(4 * MiB)
        f.write(secret)
    point = _backup(service, vol, "secret-volume")
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert b"TOP-SECRET" not in content
            assert b"secret-volume" not in content
    out = tmp_path / "out.img"
    _restore(service, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_a_long_lived_service_sees_points_made_by_another_process(tmp_path: Path) -> None:
    """The index is loaded once; pieces written later elsewhere are found on demand."""
    init_repository(str(tmp_path / "repo"))
    long_lived = Service(str(tmp_path / "repo"))
    assert long_lived.list_points() == []
    long_lived.repo.load_index()
    other = Service(str(tmp_path / "repo"))
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=9)
    point = _backup(other, vol)
    assert [p.id for p in long_lived.list_points()] == [point.id]
    out = tmp_path / "out.img"
    _restore(long_lived, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_byte_granular_changes_restore_exactly(repo: Service, tmp_path: Path) -> None:
    """Changed ranges need not be block-aligned (a ranges file may say anything): such a
    restore goes through the page cache, aligned ones around it; both must be exact."""
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(2 * MiB))
    _backup(repo, vol)
    changed = [(1000, 333), (5000, 1), (70001, 9000), (2 * MiB - 7, 7)]
    with open(vol, "r+b") as f:
        for offset, length in changed:
            f.seek(offset)
            f.write(os.urandom(length))
    point = _backup(repo, vol, changed_ranges=changed)
    assert point.stats["bytes_read"] == sum(n for _, n in changed)
    out = tmp_path / "out.img"
    _restore(repo, point.id, out)
    assert sha256_file(out) == sha256_file(vol)


def test_a_small_incremental_uploads_several_small_packs_and_a_large_backup_full_ones(
    tmp_path: Path,
) -> None:
    """A changed-ranges incremental of a few MiB splits its upload into packs of an eighth of
    its bytes (4 MiB at least), so they upload side by side while it reads; a backup of many
    packs' worth keeps the repository's pack size."""
    init_repository(str(tmp_path / "repo"))  # 4 MiB grid, 16 MiB packs
    service = Service(str(tmp_path / "repo"))
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(192 * MiB))
    full = _backup(service, vol)
    packs = {p: p.stat().st_size for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()}
    assert full.stats["packs_written"] == len(packs) == 12
    assert min(packs.values()) >= 16 * MiB

    changed = scribble(vol, 24 * 16, 64 * 1024, seed=3)  # 24 MiB of random 64 KiB writes
    point = _backup(service, vol, changed_ranges=changed)
    new = [
        p.stat().st_size
        for p in (tmp_path / "repo" / "packs").rglob("*")
        if p.is_file() and p not in packs
    ]
    assert point.stats["packs_written"] == len(new) == 6
    new.sort()
    assert all(4 * MiB <= size < 5 * MiB for size in new[1:]), new  # the last one: the rest
    assert sum(new) >= 24 * MiB
    out = tmp_path / "restored.img"
    _restore(service, point.id, out)
    assert sha256_file(out) == sha256_file(vol)
