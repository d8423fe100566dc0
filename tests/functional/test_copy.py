"""Copying points between repositories, and comparing two: folders and real S3 (SeaweedFS)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage import open_storage
from lamina.backend.service import JobState, Service, init_repository
from lamina.backend.service.copies import compare, start_copy
from tests.support.volumes import make_volume, scribble, sha256_file

KiB = 1024
MiB = 1024 * KiB
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def run(job: Any) -> Any:
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    return job.result


def back_up_chain(
    service: Service, vol: Path, steps: int, *, first_seed: int = 0
) -> dict[str, str]:
    """``steps`` points of volume v (a full one when the repository has none): id -> sha256."""
    expected = {}
    for step in range(steps):
        seed = first_seed + step
        changed = scribble(vol, 20, 8192, seed=seed + 100) if step or first_seed else None
        point = run(service.start_backup(str(vol), "v", changed_ranges=changed))
        expected[point.id] = sha256_file(vol)
    return expected


def restore_all(service: Service, expected: dict[str, str], tmp: Path) -> None:
    for point_id, digest in expected.items():
        out = tmp / f"restored-{point_id}.img"
        run(service.start_restore(point_id, str(out)))
        assert sha256_file(out) == digest, point_id
        out.unlink()


def pack_bytes(url: str) -> int:
    return sum(info.size for info in open_storage(url).list("packs/"))


def verify_clean(service: Service) -> None:
    report = run(service.start_verify(deep=True))
    assert report.ok, report.problems


def test_copy_to_s3_moves_sealed_pieces_as_they_are_and_then_only_new_ones(
    s3_repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = str(tmp_path / "local")
    password = b"one key for both"
    init_repository(local, grid_size=256 * KiB, password=password)
    src = Service(local, password=password)
    vol = make_volume(tmp_path / "vol.img", 16 * MiB, seed=4)
    expected = back_up_chain(src, vol, 3)

    # The same keys (a copy of the config) and settings: blobs are moved, never re-encoded.
    config = open_storage(local).get("config")
    open_storage(s3_repo_url, create=True).put("config", config, if_absent=True)
    assert Repository.open(open_storage(s3_repo_url), password=password).id == src.repo.id
    with pytest.raises(Exception, match="same repository"):
        start_copy(src, Service(s3_repo_url, password=password))
    # The first config was this one's twin; a destination of its own needs its own id.
    open_storage(s3_repo_url).delete("config")
    blob = json.loads(config)
    blob["id"] = "0" * 32
    # Re-wrap the master key for the new id: the only supported way is the engine's own.
    from lamina.backend.engine.crypto import unwrap_keys, wrap_keys

    keys = unwrap_keys(json.loads(config)["encryption"], password, json.loads(config)["id"])
    blob["encryption"] = wrap_keys(keys, password, blob["id"])
    open_storage(s3_repo_url).put("config", json.dumps(blob).encode(), if_absent=True)
    dst = Service(s3_repo_url, password=password)

    def no_encoding(*args: object) -> None:
        raise AssertionError("a piece was re-encoded")

    with monkeypatch.context() as patched:
        patched.setattr(Repository, "encode_piece", no_encoding)
        report = run(start_copy(src, dst))
        assert report.mode == "as-is"
        assert sorted(report.copied) == sorted(expected)
        assert report.pieces_copied > 0
        first_packs = pack_bytes(s3_repo_url)
        # Sealed blobs moved byte for byte: every piece's stored bytes are the same on both sides.
        src_repo, dst_repo = src.repo, dst.repo
        src_repo.load_index()
        dst_repo.reload_index()
        for entry in list(dst_repo.index.entries())[:50]:
            theirs = src_repo.index.get(entry.piece_id)
            assert theirs is not None
            assert dst_repo.storage.get_range(
                f"packs/{entry.pack_id.hex()[:2]}/{entry.pack_id.hex()}",
                entry.offset,
                entry.stored_size,
            ) == src_repo.storage.get_range(
                f"packs/{theirs.pack_id.hex()[:2]}/{theirs.pack_id.hex()}",
                theirs.offset,
                theirs.stored_size,
            )

    # The chain grows by two points: a second copy moves only their new pieces.
    more = back_up_chain(src, vol, 2, first_seed=10)
    new_stored = sum(src.get_point(p).stats["bytes_stored"] for p in more)
    up_before = dst.repo.counter.bytes_up
    report = run(start_copy(src, dst))
    assert sorted(report.copied) == sorted(more)
    assert sorted(report.present) == sorted(expected)
    grown = pack_bytes(s3_repo_url) - first_packs
    assert 0 < grown <= new_stored + 8 * KiB  # their pieces and two pack headers
    assert report.bytes_uploaded == grown
    assert dst.repo.counter.bytes_up - up_before < new_stored + 64 * KiB  # maps, index, locks
    assert grown < first_packs / 4

    # A third copy finds nothing to do.
    report = run(start_copy(src, dst))
    assert report.copied == [] and report.bytes_uploaded == 0

    expected |= more
    fresh = Service(s3_repo_url, password=password)
    for point_id in expected:
        point = fresh.find_point(point_id).manifest
        original = src.find_point(point_id).manifest
        for key in ("id", "parent", "created", "volume", "labels", "image_digest", "stats"):
            assert point[key] == original[key], key
    restore_all(fresh, expected, tmp_path)
    verify_clean(fresh)
    verify_clean(src)


def test_copy_encrypted_s3_to_plain_folder_and_on_to_another_key(
    s3_repo_url: str, tmp_path: Path
) -> None:
    """Other keys, grids and compression: pieces are opened, re-cut, re-sealed and renamed."""
    init_repository(s3_repo_url, grid_size=256 * KiB, password=b"first")
    src = Service(s3_repo_url, password=b"first")
    vol = make_volume(tmp_path / "vol.img", 16 * MiB, seed=8)
    expected = back_up_chain(src, vol, 3)

    plain = str(tmp_path / "plain")
    init_repository(plain, grid_size=64 * KiB, zstd_level=5)  # finer grid: pieces are re-cut
    dst = Service(plain)
    report = run(start_copy(src, dst, verify=True))
    assert report.mode == "re-encoded" and report.verified
    assert sorted(report.copied) == sorted(expected)
    restore_all(Service(plain), expected, tmp_path)
    verify_clean(Service(plain))
    for point_id in expected:
        copied, original = Service(plain).get_point(point_id), src.get_point(point_id)
        assert (copied.parent, copied.created, copied.volume) == (
            original.parent,
            original.created,
            original.volume,
        )
    assert compare(src, Service(plain)).in_sync

    # On to an encrypted folder with another password and a coarser grid, and back to S3.
    other = str(tmp_path / "other")
    init_repository(other, grid_size=1 * MiB, password=b"second")
    run(start_copy(Service(plain), Service(other, password=b"second")))
    restore_all(Service(other, password=b"second"), expected, tmp_path)
    verify_clean(Service(other, password=b"second"))

    # The source grows; the plain copy catches up with only the new point's pieces.
    more = back_up_chain(src, vol, 1, first_seed=20)
    before = pack_bytes(plain)
    report = run(start_copy(src, Service(plain)))
    assert report.copied == list(more)
    # The new point's pieces, at most: 20 changed 8 KiB blocks, before compression.
    assert 0 < pack_bytes(plain) - before <= 20 * 8 * KiB + 8 * KiB
    restore_all(Service(plain), more, tmp_path)


def test_compare_lists_missing_behind_and_differing_points(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    init_repository(a, grid_size=64 * KiB)
    init_repository(b, grid_size=64 * KiB)
    left = Service(a)
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=2)
    expected = back_up_chain(left, vol, 3)
    ids = list(expected)
    run(start_copy(left, Service(b), [ids[1]]))  # the first two points
    report = compare(left, Service(b))
    [v] = report.volumes
    assert v.both == ids[:2] and v.only_left == ids[2:] and v.only_right == []
    assert v.newest_common == ids[1]
    assert v.right_behind_points == 1 and v.left_behind_points == 0
    assert 0 < v.right_behind_bytes <= 20 * 8192
    assert v.left_behind_bytes == 0

    # Tampering with one side's manifest makes the point differ.
    manifest = Path(b) / "manifests" / ids[0]
    body = json.loads(manifest.read_text())
    body["image_digest"] = "blake3:" + "0" * 64
    manifest.write_text(json.dumps(body))
    out = subprocess.run([*LAMINA, "compare", a, b, "--json"], capture_output=True, text=True)
    assert out.returncode == 1, out
    [v_json] = json.loads(out.stdout)["volumes"]
    assert v_json["differing"] == [ids[0]]

    same = subprocess.run([*LAMINA, "compare", a, a], capture_output=True, text=True)
    assert same.returncode != 0
    assert same.stderr.count("\n") == 1 and "same repository" in same.stderr


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith("locks")
    }


def test_bad_input_gets_one_line_and_writes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    init_repository(str(src), grid_size=64 * KiB)
    init_repository(str(dst), grid_size=64 * KiB, password=b"right")
    vol = make_volume(tmp_path / "vol.img", 4 * MiB, seed=1)
    back_up_chain(Service(str(src)), vol, 1)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    future = tmp_path / "future"
    shutil.copytree(dst, future)
    config = json.loads((future / "config").read_text())
    config["version"] = 99
    (future / "config").write_text(json.dumps(config))
    cases = {
        "wrong password": ([str(dst), "--to-password-file", str(wrong)], "password"),
        "format version": ([str(future)], "version 99"),
        "same repository": ([str(src)], "same repository"),
    }
    for name, (args, said) in cases.items():
        before = {d: _files(d) for d in (src, dst, future)}
        out = subprocess.run(
            [*LAMINA, "copy", "--from", str(src), "--to", *args, "-q"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode != 0, name
        assert out.stderr.count("\n") == 1 and said in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr
        assert {d: _files(d) for d in (src, dst, future)} == before, name


def test_kill_9_of_a_copy_leaves_both_consistent_and_a_rerun_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    init_repository(str(src), grid_size=64 * KiB)
    vol = make_volume(tmp_path / "vol.img", 24 * MiB, seed=5, extents=40)
    expected = back_up_chain(Service(str(src)), vol, 6)

    def manifests(root: Path) -> int:
        folder = root / "manifests"
        # Files being written are hidden (.name) until they are whole.
        if not folder.exists():
            return 0
        return sum(1 for p in folder.iterdir() if not p.name.startswith("."))

    def packs(root: Path) -> int:
        folder = root / "packs"
        if not folder.exists():
            return 0
        return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    moments = {
        "a pack written": lambda d: packs(d) > 0,
        "a point written": lambda d: manifests(d) > 0,
        "half the points written": lambda d: manifests(d) >= 3,
    }
    # The random moment is drawn from a printed seed, so that a failure there can be repeated.
    seed = int(os.environ.get("LAMINA_KILL_SEED", random.randrange(2**32)))
    print(f"kill moment seed: {seed} (LAMINA_KILL_SEED={seed} repeats it)")
    random_moment = random.Random(seed).uniform(0.2, 0.8)
    interrupted = []
    for name, reached in [*moments.items(), (f"a random moment (seed {seed})", None)]:
        dst = tmp_path / "dst"
        shutil.rmtree(dst, ignore_errors=True)
        init_repository(str(dst), grid_size=128 * KiB, zstd_level=4)  # re-encodes: slower
        proc = subprocess.Popen(
            [*LAMINA, "copy", "--from", str(src), "--to", str(dst), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + (random_moment if reached is None else 60)
        while proc.poll() is None and time.monotonic() < deadline:
            if reached is not None and reached(dst):
                break
            time.sleep(0.001)
        if proc.poll() is None:
            interrupted.append(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for repo in (src, dst):
            out = subprocess.run(
                [*LAMINA, "verify", "--repo", str(repo), "--json"], capture_output=True, text=True
            )
            assert json.loads(out.stdout)["ok"], (name, repo, out.stdout)
        before = manifests(dst)
        out = subprocess.run(
            [*LAMINA, "copy", "--from", str(src), "--to", str(dst), "--json", "-q"],
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(out.stdout)
        assert len(report["present"]) == before and len(report["copied"]) == 6 - before, name
        again = json.loads(
            subprocess.run(
                [*LAMINA, "copy", "--from", str(src), "--to", str(dst), "--json", "-q"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert again["copied"] == [] and again["bytes_uploaded"] == 0, name
        verify_clean(Service(str(dst)))
        restore_all(Service(str(dst)), expected, tmp_path)
    assert len(interrupted) >= 2, f"copy was killed mid-way only at: {interrupted}"


def test_a_prune_of_the_destination_waits_for_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.backend.engine.locks import EXCLUSIVE, RepositoryLocked, acquire

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    init_repository(src, grid_size=64 * KiB)
    init_repository(dst, grid_size=64 * KiB)
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=3)
    expected = back_up_chain(Service(src), vol, 2)
    destination = Service(dst)
    seen: list[str] = []

    original = Repository.save_point

    def save_point(self: Repository, *args: Any, **kwargs: Any) -> Any:
        if self.url == destination.repo.url:
            # While a copy writes, no deleter can take the destination.
            with pytest.raises(RepositoryLocked):
                acquire(Repository.open(open_storage(dst)), EXCLUSIVE, "prune", wait=0)
            seen.append("locked")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Repository, "save_point", save_point)
        run(start_copy(Service(src), destination))
    assert seen == ["locked", "locked"]
    run(Service(dst).start_prune())
    restore_all(Service(dst), expected, tmp_path)


def test_a_cancelled_copy_writes_no_point_and_a_rerun_completes(tmp_path: Path) -> None:
    from lamina.backend.engine.copy import copy_points, select_points
    from lamina.backend.errors import Cancelled

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    init_repository(src, grid_size=64 * KiB)
    init_repository(dst, grid_size=64 * KiB)
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=7)
    expected = back_up_chain(Service(src), vol, 2)
    source, destination = Service(src).repo, Service(dst).repo
    listed = source.list_points()

    def cancelled() -> bool:
        # Cancel once the first point's packs are written: before its manifest is.
        return any(p.is_file() for p in (Path(dst) / "packs").rglob("*"))

    with pytest.raises(Cancelled, match="copy cancelled"):
        copy_points(
            source,
            destination,
            select_points(source, listed),
            cancelled=cancelled,
        )
    assert destination.list_points() == []
    report = run(start_copy(Service(src), Service(dst)))
    assert sorted(report.copied) == sorted(expected)
    restore_all(Service(dst), expected, tmp_path)
