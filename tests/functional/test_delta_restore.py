"""restore --delta: a target that holds some version of the volume gets only what differs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.backend.engine import restore_record
from lamina.backend.engine.extents import allocated_ranges
from lamina.backend.engine.repository import pack_key
from lamina.backend.service import JobState, Service, init_repository
from lamina.backend.service.copies import start_delta_restore
from tests.support.volumes import make_volume, scribble, sha256_file

KiB = 1024
MiB = 1024 * KiB
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def run(job: Any) -> Any:
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    return job.result


@pytest.fixture
def two_points(tmp_path: Path) -> tuple[Service, Path, str, str]:
    repo = str(tmp_path / "repo")
    init_repository(repo, grid_size=256 * KiB)  # 64 KiB fingerprint blocks
    service = Service(repo)
    vol = make_volume(tmp_path / "vol.img", 16 * MiB, seed=6, extents=30)
    old = run(service.start_backup(str(vol), "v")).id
    changed = scribble(vol, 20, 8192, seed=3)
    changed += scribble(vol, 4, 64 * KiB, seed=4, zero=True)  # zeros where data was
    new = run(service.start_backup(str(vol), "v", changed_ranges=merged(changed))).id
    return service, vol, old, new


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1]:
            last = out.pop()
            end = max(last[0] + last[1], offset + length)
            out.append((last[0], end - last[0]))
        else:
            out.append((offset, length))
    return out


def test_delta_restore_writes_only_the_blocks_that_differ(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    service, vol, old, new = two_points
    target = tmp_path / "target.img"
    run(service.start_restore(old, str(target)))
    result = run(start_delta_restore(service, new, str(target)))
    assert sha256_file(target) == sha256_file(vol)
    full = tmp_path / "full.img"
    run(service.start_restore(new, str(full)))
    assert sha256_file(full) == sha256_file(target)
    # 24 changed ranges touch at most 2 blocks of 64 KiB each.
    assert 0 < result["bytes_written"] <= 48 * 64 * KiB
    assert result["bytes_downloaded"] < 4 * MiB
    assert result["bytes_read_target"] > 0

    # A damaged target is repaired the same way; a second run finds nothing to write.
    scribble(target, 5, 4096, seed=9)
    result = run(start_delta_restore(service, new, str(target)))
    assert sha256_file(target) == sha256_file(vol)
    assert 0 < result["bytes_written"] <= 10 * 64 * KiB
    again = run(start_delta_restore(service, new, str(target)))
    assert again["bytes_written"] == 0 and again["blocks_differing"] == 0


def test_assume_from_skips_reading_the_target_and_checks_a_sample(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    service, vol, old, new = two_points
    target = tmp_path / "target.img"
    run(service.start_restore(old, str(target)))
    out = subprocess.run(
        [
            *LAMINA,
            "restore",
            "--repo",
            service.repo_url,
            new,
            str(target),
            "--delta",
            "--assume-from",
            old,
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert sha256_file(target) == sha256_file(vol)
    assert result["bytes_read_target"] <= 32 * 64 * KiB
    assert 0 < result["bytes_written"] <= 48 * 64 * KiB


def test_assume_from_refuses_a_target_that_holds_something_else(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo, grid_size=256 * KiB)
    service = Service(repo)
    vol = tmp_path / "vol.img"
    vol.write_bytes(os.urandom(4 * MiB))  # every block data: every sample tells
    old = run(service.start_backup(str(vol), "v")).id
    changed = scribble(vol, 3, 8192, seed=2)
    new = run(service.start_backup(str(vol), "v", changed_ranges=changed)).id
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(4 * MiB))
    before = sha256_file(target)
    out = subprocess.run(
        [*LAMINA, "restore", "--repo", repo, new, str(target), "--delta", "--assume-from", old],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "does not hold point" in out.stderr
    assert sha256_file(target) == before


def test_a_small_missing_or_attached_target_is_refused_untouched(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    service, vol, _old, new = two_points
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * MiB)
    cases = {
        str(small): "less than the volume",
        str(tmp_path / "missing.img"): "does not exist",
    }
    link = tmp_path / "link.img"
    link.symlink_to(vol)  # never followed: the restore writes the file it checked
    cases[str(link)] = "cannot open"
    attached = tmp_path / "attached.img"
    shutil.copyfile(vol, attached)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(attached)], capture_output=True, text=True
    )
    if loop.returncode == 0:
        cases[str(attached)] = "attached to"
    try:
        for target, said in cases.items():
            before = sha256_file(target) if os.path.exists(target) else None
            out = subprocess.run(
                [*LAMINA, "restore", "--repo", service.repo_url, new, target, "--delta"],
                capture_output=True,
                text=True,
            )
            assert out.returncode != 0, target
            assert out.stderr.count("\n") == 1 and said in out.stderr, out.stderr
            after = sha256_file(target) if os.path.exists(target) else None
            assert after == before
    finally:
        if loop.returncode == 0:
            subprocess.run(["losetup", "-d", loop.stdout.strip()], check=True)
    assert loop.returncode == 0, f"no loop device to check the attached case: {loop.stderr}"


def _mkfs_ext4() -> str:
    for candidate in (shutil.which("mkfs.ext4"), "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("mkfs.ext4 is missing (Debian package e2fsprogs; `make test` installs it)")


def test_a_mounted_target_is_refused_in_one_line_and_left_alone(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    """A filesystem mounted from the target: its block device is refused as mounted, and
    the image file under it as attached to that device, both before anything is written."""
    service, _vol, _old, new = two_points
    image = tmp_path / "mounted.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)  # the volume's size: only the mount stands in the way
    subprocess.run([_mkfs_ext4(), "-q", "-F", str(image)], check=True, capture_output=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    # Read-only: the mount itself writes nothing, so the image's digest shows any write.
    mounted = subprocess.run(
        ["mount", "-o", "ro,loop", str(image), str(mountpoint)], capture_output=True, text=True
    )
    assert mounted.returncode == 0, f"cannot mount a loop device here: {mounted.stderr}"
    try:
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mountpoint)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert source.startswith("/dev/loop"), source
        before = sha256_file(image)
        for target, said in ((source, "is mounted"), (str(image), "attached to")):
            out = subprocess.run(
                [*LAMINA, "restore", "--repo", service.repo_url, new, target, "--delta"],
                capture_output=True,
                text=True,
            )
            assert out.returncode != 0, target
            assert out.stderr.count("\n") == 1 and said in out.stderr, out.stderr
            assert "internal error" not in out.stderr
        assert sha256_file(image) == before
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


BLOCK = 64 * KiB  # the fingerprint block of a repository with a 256 KiB grid


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        return list(allocated_ranges(f.fileno(), os.path.getsize(path)))


def test_holes_on_either_side_are_settled_without_reading_and_kept_as_holes(
    tmp_path: Path,
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo, grid_size=256 * KiB)
    service = Service(repo)
    rng = random.Random(11)
    vol, target = tmp_path / "vol.img", tmp_path / "target.img"
    capacity = 32 * BLOCK
    point_data = [(0, 8), (16, 24)]  # block ranges the point holds data in; holes elsewhere
    with open(vol, "wb") as v, open(target, "wb") as t:
        v.truncate(capacity)
        t.truncate(capacity)
        for first, end in point_data:
            data = rng.randbytes((end - first) * BLOCK)
            v.seek(first * BLOCK)
            v.write(data)
            if first == 0:  # blocks 0-3 as the point has them; 4-7 a hole in the target
                t.seek(0)
                t.write(data[: 4 * BLOCK])
        t.seek(8 * BLOCK)  # data where the point has a hole (blocks 12-15: a hole on both)
        t.write(rng.randbytes(4 * BLOCK))
        t.seek(16 * BLOCK)  # zeros written as data where the point has other data
        t.write(bytes(8 * BLOCK))
    point = run(service.start_backup(str(vol), "v")).id

    result = run(start_delta_restore(service, point, str(target)))
    assert sha256_file(target) == sha256_file(vol)
    # Only blocks with data on both sides are read: 0-3 (same) and 16-23 (differ).
    assert result["bytes_read_target"] == 12 * BLOCK
    assert result["blocks_differing"] == 4 + 4 + 8
    # The point's holes are holes in the target again, blocks 8-11 included.
    assert _data_ranges(target) == [(0, 8 * BLOCK), (16 * BLOCK, 8 * BLOCK)]

    # Without the record of that restore, the target is read where both sides hold data.
    restore_record.forget(str(target))
    again = run(start_delta_restore(service, point, str(target)))
    assert again["basis"] == "target"
    assert again["blocks_differing"] == 0 and again["bytes_written"] == 0
    assert again["bytes_read_target"] == 16 * BLOCK
    assert sha256_file(target) == sha256_file(vol)


# ---------------------------------------------------------------- restore records


def test_a_restore_record_lets_a_delta_restore_skip_reading_the_target(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    service, vol, old, new = two_points
    target = tmp_path / "target.img"
    run(service.start_restore(old, str(target)))  # a full restore leaves a record
    out = subprocess.run(
        [*LAMINA, "restore", "--repo", service.repo_url, new, str(target), "--delta"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"it held point {old}, as recorded" in out.stdout
    full = tmp_path / "full.img"
    run(service.start_restore(new, str(full)))
    assert sha256_file(target) == sha256_file(vol) == sha256_file(full)
    # The delta restore left its own record: the next one reads only the sample.
    again = run(start_delta_restore(service, new, str(target)))
    assert again["basis"] == "record" and again["assumed_from"] == new
    assert again["blocks_differing"] == 0 and again["bytes_written"] == 0
    assert 0 < again["bytes_read_target"] <= 32 * BLOCK
    assert sha256_file(target) == sha256_file(vol)


def _scribble_keeping_mtime(path: Path) -> None:
    """Change a few bytes, then put the modification time back with `touch -d`."""
    before = os.stat(path)
    scribble(path, 8, 4096, seed=21)
    seconds, nanoseconds = divmod(before.st_mtime_ns, 10**9)
    subprocess.run(["touch", "-d", f"@{seconds}.{nanoseconds:09d}", str(path)], check=True)
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert after.st_ctime_ns != before.st_ctime_ns


def test_a_target_changed_after_its_record_is_read_again_in_full(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    """Written with its mtime put back (ctime moved), or replaced by an edited copy (another
    inode): the record no longer matches, the target is read and the result is exact."""
    service, vol, old, new = two_points
    target = tmp_path / "target.img"
    run(service.start_restore(old, str(target)))
    _scribble_keeping_mtime(target)
    result = run(start_delta_restore(service, new, str(target)))
    assert result["basis"] == "target" and result["assumed_from"] is None
    assert result["bytes_read_target"] > 32 * BLOCK
    assert sha256_file(target) == sha256_file(vol)

    copy = tmp_path / "copy.img"
    subprocess.run(["cp", "-p", "--sparse=always", str(target), str(copy)], check=True)
    _scribble_keeping_mtime(copy)
    os.replace(copy, target)
    result = run(start_delta_restore(service, new, str(target)))
    assert result["basis"] == "target"
    assert sha256_file(target) == sha256_file(vol)


def test_a_record_the_sample_contradicts_or_an_unreadable_one_is_not_trusted(
    two_points: tuple[Service, Path, str, str], tmp_path: Path
) -> None:
    service, vol, old, new = two_points
    target = tmp_path / "target.img"
    target.write_bytes(random.Random(5).randbytes(os.path.getsize(vol)))
    # A record matching the file's identity exactly, naming a point the file does not hold:
    # only the sample can tell.
    restore_record.record(service.repo.id, old, str(target), os.stat(target))
    with open(target, "rb") as f:
        assert restore_record.matching(service.repo.id, str(target), f.fileno()) is not None
    result = run(start_delta_restore(service, new, str(target)))
    assert result["basis"] == "target"
    assert sha256_file(target) == sha256_file(vol)

    records = list((Path(os.environ["LAMINA_CACHE_DIR"]) / "restores").glob("*.json"))
    for path in records:
        path.write_text("{not json")
    scribble(target, 4, 4096, seed=8)
    result = run(start_delta_restore(service, new, str(target)))
    assert result["basis"] == "target"
    assert sha256_file(target) == sha256_file(vol)


# ---------------------------------------------------------------- ranges of raw pieces


def _raw_points(repo: str, tmp_path: Path) -> tuple[Service, Path, bytes, str, str]:
    """A volume of incompressible data (raw pieces of a grid cell each), then 6 changes of
    8 KiB: going back to the first point needs a few 64 KiB blocks of 256 KiB pieces."""
    init_repository(repo, grid_size=256 * KiB)
    service = Service(repo)
    vol = tmp_path / "vol.img"
    vol.write_bytes(random.Random(12).randbytes(8 * MiB))
    original = vol.read_bytes()
    old = run(service.start_backup(str(vol), "v")).id
    changed = scribble(vol, 6, 8192, seed=13)
    new = run(service.start_backup(str(vol), "v", changed_ranges=changed)).id
    return service, vol, original, old, new


@pytest.fixture
def raw_points(tmp_path: Path) -> tuple[Service, Path, bytes, str, str]:
    return _raw_points(str(tmp_path / "repo"), tmp_path)


@pytest.mark.parametrize("storage", ["folder", "s3"])
def test_assume_from_back_to_an_older_point_fetches_ranges_of_its_pieces(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "repo") if storage == "folder" else request.getfixturevalue("s3_repo_url")
    service, vol, original, old, new = _raw_points(url, tmp_path)
    target = tmp_path / "target.img"
    shutil.copyfile(vol, target)
    result = run(start_delta_restore(service, old, str(target), assume_from=new))
    assert target.read_bytes() == original
    assert result["blocks_from_ranges"] == result["blocks_differing"] > 0
    # Whole pieces would be 256 KiB for each 64 KiB block; ranges are the blocks' data (and
    # the points' maps and fingerprints, a few KiB).
    assert (
        result["bytes_written"] <= result["bytes_downloaded"] < result["bytes_written"] + 64 * KiB
    )


def test_a_damaged_range_fails_its_fingerprint_and_is_not_written(
    raw_points: tuple[Service, Path, bytes, str, str], tmp_path: Path
) -> None:
    service, vol, _original, old, new = raw_points
    repo = service.repo
    for extent in repo.resolve(repo.load_point(old)):
        entry = repo.find_piece(extent.piece_id)
        assert entry is not None
        pack = Path(service.repo_url) / pack_key(entry.pack_id)
        with open(pack, "r+b") as f:  # one flipped byte in every 4 KiB of the piece
            for at in range(entry.offset, entry.offset + entry.stored_size, 4096):
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0xFF]))
    target = tmp_path / "target.img"
    shutil.copyfile(vol, target)
    out = subprocess.run(
        [
            *LAMINA,
            *("restore", "--repo", service.repo_url, old, str(target)),
            *("--delta", "--assume-from", new),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "fails the fingerprint" in out.stderr, out.stderr
    assert sha256_file(target) == sha256_file(vol)  # nothing of the damaged ranges written
