"""Retention, deletion, consolidation and prune: every remaining point restores exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.backend.engine.lifecycle import Policy
from lamina.backend.engine.locks import EXCLUSIVE, SHARED, RepositoryLocked, acquire
from lamina.backend.errors import LaminaError
from lamina.backend.service import JobState, Service, init_repository
from tests.support.volumes import sha256_file

KiB = 1024
MiB = 1024 * KiB
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def run(job: object) -> object:
    assert job.wait(300)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    return job.result  # type: ignore[attr-defined]


def image_of(service: Service, point_id: str) -> bytes:
    with service.open_image(point_id, readahead_bytes=0) as image:
        return image.pread(image.size, 0)


def check_all(service: Service, expected: dict[str, bytes]) -> None:
    """Every remaining point reads exactly what was backed up, and deep verify is clean."""
    points = service.list_points()
    assert {p.id for p in points} <= set(expected)
    for p in points:
        assert image_of(service, p.id) == expected[p.id], f"point {p.id} changed"
    report = run(service.start_verify(deep=True))
    assert report.ok, report.problems  # type: ignore[attr-defined]


class Volume:
    """A small image that changes between backups in scattered 4 KiB writes."""

    def __init__(self, path: Path, size: int, seed: int) -> None:
        self.path = path
        self.size = size
        self.rng = random.Random(seed)
        with open(path, "wb") as f:
            f.truncate(size)

    def change(self, blocks: int) -> list[tuple[int, int]]:
        offsets = sorted(set(self.rng.randrange(self.size // 4096) * 4096 for _ in range(blocks)))
        with open(self.path, "r+b") as f:
            for o in offsets:
                f.seek(o)
                f.write(self.rng.randbytes(4096) if self.rng.random() < 0.85 else bytes(4096))
        return [(o, 4096) for o in offsets]


# ---------------------------------------------------------------------------- property test

operations = st.lists(
    st.one_of(
        st.tuples(st.just("backup"), st.integers(1, 12)),
        st.tuples(st.just("forget"), st.integers(1, 3)),
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("consolidate"), st.integers(0, 20)),
        st.tuples(st.just("prune"), st.sampled_from([0.0, 0.5, 1.0])),
        st.tuples(st.just("protect"), st.integers(0, 20)),
    ),
    min_size=3,
    max_size=10,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, seed=st.integers(0, 1000))
def test_random_lifecycles_keep_every_point_exact(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], seed: int
) -> None:
    tmp = tmp_path_factory.mktemp("life")
    init_repository(str(tmp / "repo"), grid_size=64 * KiB)
    service = Service(str(tmp / "repo"), lock_wait=5)
    vol = Volume(tmp / "vol.img", 512 * KiB, seed)
    vol.change(40)
    expected: dict[str, bytes] = {}
    first = run(service.start_backup(str(vol.path), "v"))
    expected[first.id] = vol.path.read_bytes()  # type: ignore[attr-defined]
    for op, arg in ops:
        points = service.list_points()
        if op == "backup":
            vol.change(arg)
            # what CBT would report: the blocks that differ from the parent's snapshot
            parent = points[-1] if points else None
            changed = _delta(expected[parent.id], vol.path.read_bytes()) if parent else None
            point = run(
                service.start_backup(
                    str(vol.path),
                    "v",
                    parent=parent.id if parent else "none",
                    changed_ranges=changed,
                )
            )
            expected[point.id] = vol.path.read_bytes()  # type: ignore[attr-defined]
        elif op == "forget" and points:
            run(service.start_forget(Policy(last=arg)))
        elif op == "delete" and points:
            target = points[arg % len(points)]
            job = service.start_delete(target.id)
            job.wait()
            assert job.state == JobState.SUCCEEDED or "protected" in str(job.error)
        elif op == "consolidate" and points:
            target = points[arg % len(points)]
            job = service.start_consolidate(target.id)
            job.wait()
            assert job.state == JobState.SUCCEEDED or "full point already" in str(job.error)
        elif op == "prune":
            run(service.start_prune(repack_below=float(arg)))
        elif op == "protect" and points:
            service.protect(points[arg % len(points)].id)
        check_all(Service(str(tmp / "repo")), expected)


def _delta(old: bytes, new: bytes) -> list[tuple[int, int]]:
    return [(o, 4096) for o in range(0, len(new), 4096) if old[o : o + 4096] != new[o : o + 4096]]


# ---------------------------------------------------------------------------- plain behaviour


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Service, Volume, dict[str, bytes]]:
    init_repository(str(tmp_path / "repo"), grid_size=64 * KiB)
    service = Service(str(tmp_path / "repo"), lock_wait=5)
    vol = Volume(tmp_path / "vol.img", 2 * MiB, 1)
    vol.change(100)
    expected = {}
    for step in range(5):
        changed = vol.change(20) if step else None
        point = run(service.start_backup(str(vol.path), "v", changed_ranges=changed))
        expected[point.id] = vol.path.read_bytes()  # type: ignore[attr-defined]
    return service, vol, expected


def test_deleting_mid_chain_keeps_descendants_digests(
    chain: tuple[Service, Volume, dict[str, bytes]],
) -> None:
    service, _, expected = chain
    before = {p.id: p.image_digest for p in service.list_points()}
    ids = list(before)
    run(service.start_delete(ids[2]))
    after = {p.id: p for p in service.list_points()}
    assert ids[2] not in after
    assert after[ids[3]].parent == ids[1]
    assert ids[2] in after[ids[3]].manifest["consolidated"]
    for point_id, p in after.items():
        assert p.image_digest == before[point_id]
    check_all(service, expected)
    # deleting the full point makes its child a full point
    run(service.start_delete(ids[0]))
    assert service.get_point(ids[1]).kind == "full" and service.get_point(ids[1]).parent is None
    report = run(service.start_prune())
    assert report.packs_deleted + report.maps_deleted > 0  # type: ignore[attr-defined]
    check_all(service, expected)


def test_consolidate_shortens_the_chain_without_copying_data(
    chain: tuple[Service, Volume, dict[str, bytes]],
) -> None:
    service, _, expected = chain
    ids = [p.id for p in service.list_points()]
    packs_before = len(list(service.repo.list_packs()))
    merged = run(service.start_consolidate(ids[-1], until=ids[1]))
    assert merged.parent == ids[0]  # type: ignore[attr-defined]
    assert len(service.chain(ids[-1])) == 2
    assert len(list(service.repo.list_packs())) == packs_before
    merged = run(service.start_consolidate(ids[-1]))
    assert merged.kind == "full" and len(service.chain(ids[-1])) == 1  # type: ignore[attr-defined]
    check_all(service, expected)


def test_protected_points_survive_forget_and_delete(
    chain: tuple[Service, Volume, dict[str, bytes]],
) -> None:
    service, _, expected = chain
    ids = [p.id for p in service.list_points()]
    service.protect(ids[1])
    dry = run(service.start_forget(Policy(last=1), dry_run=True))
    assert [d.keep for d in dry.decisions] == [True, False, False, True, False]  # type: ignore[attr-defined]
    assert service.list_points()[0].id == ids[0]  # dry run changed nothing
    job = service.start_delete(ids[1])
    job.wait()
    assert job.state == JobState.FAILED and "protected" in str(job.error)
    report = run(service.start_forget(Policy(last=1)))
    assert sorted(report.removed) == sorted([ids[0], ids[2], ids[3]])  # type: ignore[attr-defined]
    assert {p.id for p in service.list_points()} == {ids[1], ids[4]}
    run(service.start_prune())
    check_all(service, expected)


def test_prune_reclaims_overwritten_data_and_repacks(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"), grid_size=64 * KiB)
    service = Service(str(tmp_path / "repo"))
    vol = tmp_path / "vol.img"
    vol.write_bytes(os.urandom(4 * MiB))
    first = run(service.start_backup(str(vol), "v"))
    with open(vol, "r+b") as f:
        f.write(os.urandom(3 * MiB))  # most of the first point is overwritten
    second = run(service.start_backup(str(vol), "v", changed_ranges=[(0, 3 * MiB)]))
    expected = {second.id: vol.read_bytes()}  # type: ignore[attr-defined]
    dry = run(service.start_prune(dry_run=True))
    assert dry.bytes_reclaimed == 0  # type: ignore[attr-defined]
    run(service.start_delete(first.id))  # type: ignore[attr-defined]
    report = run(service.start_prune())
    # the folded map of the second point hides 3 MiB of the first point's pieces
    assert report.bytes_reclaimed >= 3 * MiB - 64 * KiB  # type: ignore[attr-defined]
    assert report.packs_repacked >= 1  # type: ignore[attr-defined]
    total = sum(size for _, size in service.repo.list_packs())
    assert total < 4.2 * MiB
    check_all(Service(str(tmp_path / "repo")), expected)


# ---------------------------------------------------------------------------- locks


def test_locks_exclude_prune_from_backups(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), lock_wait=0)
    held = acquire(service.repo, SHARED, "a backup")
    assert held is not None
    with pytest.raises(RepositoryLocked, match="shared lock for a backup"):
        acquire(Service(str(tmp_path / "repo")).repo, EXCLUSIVE, "prune")
    job = service.start_prune()
    job.wait()
    assert job.state == JobState.FAILED and "in use" in str(job.error)
    second = acquire(Service(str(tmp_path / "repo")).repo, SHARED, "another backup")
    assert second is not None  # shared locks do not exclude each other
    second.release()
    held.release()
    run(service.start_prune())


def test_stale_locks_are_ignored_and_removed(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), lock_wait=0)
    stale = {
        "kind": "exclusive",
        "purpose": "prune",
        "host": "gone",
        "pid": 1,
        "created": 0,
        "expires": time.time() - 3600,
    }
    service.repo.storage.put("locks/deadbeef", json.dumps(stale).encode())
    run(service.start_backup(str(_small_image(tmp_path)), "v"))
    assert [lock.purpose for lock in service.list_locks()] == ["prune"]
    assert [lock.key for lock in service.unlock()] == ["locks/deadbeef"]
    assert service.list_locks() == []


def _small_image(tmp_path: Path) -> Path:
    path = tmp_path / "small.img"
    path.write_bytes(os.urandom(256 * KiB))
    return path


# ---------------------------------------------------------------------------- crashes and races


def _repo_with_garbage(
    repo: Path, tmp: Path, cli_env: dict[str, str] | None = None
) -> dict[str, str]:
    """A repository whose prune has much to delete and repack; returns point -> sha256."""
    subprocess.run(
        [*LAMINA, "repo", "init", str(repo), "--grid-size", "64KiB"],
        check=True,
        env=cli_env,
        capture_output=True,
    )
    vol = Volume(tmp / "vol.img", 24 * MiB, 5)
    vol.change(3000)
    expected = {}
    for step in range(6):
        ranges = tmp / "ranges.json"
        changed = vol.change(600) if step else []
        ranges.write_text(json.dumps([{"byte_offset": o, "size_bytes": n} for o, n in changed]))
        args = ["--changed-ranges", str(ranges)] if step else []
        out = subprocess.run(
            [
                *LAMINA,
                "backup",
                "--repo",
                str(repo),
                "--volume",
                "v",
                str(vol.path),
                "--json",
                *args,
            ],
            check=True,
            env=cli_env,
            capture_output=True,
            text=True,
        ).stdout
        expected[json.loads(out)["id"]] = sha256_file(vol.path)
    subprocess.run(
        [*LAMINA, "forget", "--repo", str(repo), "--keep-last", "2"],
        check=True,
        env=cli_env,
        capture_output=True,
    )
    return expected


def _restore_all(
    repo: str, tmp: Path, expected: dict[str, str], cli_env: dict[str, str] | None = None
) -> None:
    points = json.loads(
        subprocess.run(
            [*LAMINA, "points", "--repo", repo, "--json"],
            check=True,
            env=cli_env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert points
    for p in points:
        out = tmp / f"restore-{p['id']}.img"
        subprocess.run(
            [*LAMINA, "restore", "--repo", repo, p["id"], str(out), "-q"],
            check=True,
            env=cli_env,
            capture_output=True,
        )
        assert sha256_file(out) == expected[p["id"]]
        out.unlink()


def _files(repo: Path, folder: str) -> set[str]:
    return {
        str(p) for p in (repo / folder).rglob("*") if p.is_file() and not p.name.startswith(".")
    }


def test_kill_9_of_prune_loses_nothing(tmp_path: Path) -> None:
    """Kill prune at each of its steps (new packs written, new index written, old index
    deleted, old packs deleted) and at a random moment; nothing referenced is ever lost."""
    pristine = tmp_path / "pristine"
    expected = _repo_with_garbage(pristine, tmp_path)
    packs, segments = _files(pristine, "packs"), _files(pristine, "index")
    moments = {
        "a new pack": lambda r: bool(_files(r, "packs") - _repoint(packs, pristine, r)),
        "a new index segment": lambda r: bool(_files(r, "index") - _repoint(segments, pristine, r)),
        "an old segment deleted": lambda r: bool(
            _repoint(segments, pristine, r) - _files(r, "index")
        ),
        "an old pack deleted": lambda r: bool(_repoint(packs, pristine, r) - _files(r, "packs")),
    }
    # The random moment is drawn from a printed seed, so that a failure there can be repeated.
    seed = int(os.environ.get("LAMINA_KILL_SEED", random.randrange(2**32)))
    print(f"kill moment seed: {seed} (LAMINA_KILL_SEED={seed} repeats it)")
    random_moment = random.Random(seed).uniform(0.3, 0.7)
    interrupted = []
    for name, reached in [*moments.items(), (f"a random moment (seed {seed})", None)]:
        repo = tmp_path / "repo"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(pristine, repo)
        proc = subprocess.Popen(
            [*LAMINA, "prune", "--repo", str(repo), "--repack-below", "0.9"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + (random_moment if reached is None else 60)
        while proc.poll() is None and time.monotonic() < deadline:
            if reached is not None and reached(repo):
                break
            time.sleep(0.001)
        if proc.poll() is None:
            interrupted.append(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run(
            [*LAMINA, "unlock", "--repo", str(repo), "--all"], check=True, capture_output=True
        )
        verify = subprocess.run(
            [*LAMINA, "verify", "--repo", str(repo), "--deep", "--json"],
            capture_output=True,
            text=True,
        )
        assert json.loads(verify.stdout)["ok"], (name, verify.stdout)
        _restore_all(str(repo), tmp_path, expected)
        subprocess.run([*LAMINA, "prune", "--repo", str(repo)], check=True, capture_output=True)
        _restore_all(str(repo), tmp_path, expected)
    assert len(interrupted) >= 3, f"prune was killed mid-way only at: {interrupted}"


def _repoint(paths: set[str], old: Path, new: Path) -> set[str]:
    return {str(new / Path(p).relative_to(old)) for p in paths}


@pytest.mark.slow
def test_backups_and_prunes_race_on_s3(s3_repo_url: str, tmp_path: Path) -> None:
    """Rounds of concurrent backups, forgets and prunes (separate repository handles, as
    separate processes would be); afterwards every point restores and deep verify is clean."""
    init_repository(s3_repo_url, grid_size=64 * KiB)
    volumes = [Volume(tmp_path / f"v{i}.img", 2 * MiB, i) for i in range(2)]
    expected: dict[str, bytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def backups(i: int) -> None:
        service = Service(s3_repo_url, lock_wait=120)
        vol = volumes[i]
        vol.change(200)
        try:
            for step in range(6):
                changed = vol.change(30) if step else None
                point = run(service.start_backup(str(vol.path), f"v{i}", changed_ranges=changed))
                with lock:
                    expected[point.id] = vol.path.read_bytes()  # type: ignore[attr-defined]
        except BaseException as e:
            errors.append(e)

    def pruner() -> None:
        service = Service(s3_repo_url, lock_wait=120)
        try:
            for _ in range(5):
                run(service.start_forget(Policy(last=3)))
                run(service.start_prune(repack_below=0.8))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=backups, args=(i,)) for i in range(2)] + [
        threading.Thread(target=pruner)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    service = Service(s3_repo_url)
    run(service.start_prune())
    check_all(service, expected)


def test_object_lock_keeps_data_until_retention_ends(s3_env: object, tmp_path: Path) -> None:
    from tests.support.seaweedfs import S3Server

    assert isinstance(s3_env, S3Server)
    bucket = f"locked-{random.randrange(10**9)}"
    url = f"s3://{bucket}/repo"
    info = init_repository(url, object_lock_days=1)
    assert info.object_lock_days == 1
    s3 = s3_env.client()
    assert (
        s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"][
            "ObjectLockEnabled"
        ]
        == "Enabled"
    )
    service = Service(url)
    point = run(service.start_backup(str(_small_image(tmp_path)), "v"))
    key = next(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/packs/")["Contents"]
    )
    retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    run(service.start_delete(point.id))  # type: ignore[attr-defined]
    report = run(service.start_prune())
    assert report.packs_kept_locked >= 1 and report.packs_deleted == 0  # type: ignore[attr-defined]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="repo/packs/")["KeyCount"] >= 1
    with pytest.raises(LaminaError, match="needs an S3 repository"):
        init_repository(str(tmp_path / "local-repo"), object_lock_days=1)


def test_lock_of_a_dead_local_process_is_stale(tmp_path: Path) -> None:
    import socket

    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), lock_wait=0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {
        "kind": "shared",
        "purpose": "backup",
        "host": socket.gethostname(),
        "pid": dead.pid,
        "created": time.time(),
        "expires": time.time() + 300,
    }
    service.repo.storage.put("locks/cafe", json.dumps(lock).encode())
    assert service.list_locks()[0].stale
    run(service.start_prune())  # not held up by the dead backup's lease


def test_browsing_files_does_not_hold_up_a_prune_in_the_same_process(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n")
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), lock_wait=2)
    point = run(service.start_backup(str(image), "v"))
    assert [e.name for e in service.list_files(point.id, "/") if e.name == "hello.txt"]  # type: ignore[attr-defined]
    run(service.start_prune())  # the open view's shared lock is given back first
    assert [e.name for e in service.list_files(point.id, "/") if e.name == "hello.txt"]  # type: ignore[attr-defined]
