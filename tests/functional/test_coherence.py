"""Long-lived processes never act on a stale view of the repository (docs/format.md, "Coherence").

Each test keeps one `Service` alive, as `lamina serve` or the TUI does, and changes the
repository beside it through a second `Service`, which stands for another process (the two
share nothing but the storage). Every test here failed before the coherence protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.backend.engine import lifecycle, locks
from lamina.backend.engine import pipelines as engine
from lamina.backend.engine.lifecycle import Policy
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage import ObjectInfo, Storage, StorageError, open_storage
from lamina.backend.engine.storage.local import LocalStorage
from lamina.backend.engine.storage.wrappers import RetryingStorage
from lamina.backend.errors import LaminaError
from lamina.backend.service import JobState, Service, VolumeRef, init_repository
from tests.support.s3proxy import s3_proxy
from tests.support.seaweedfs import S3Server

KiB = 1024
MiB = 1024 * KiB
GRID = 64 * KiB
CELLS = 8


def run(job: object) -> object:
    assert job.wait(300)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    return job.result  # type: ignore[attr-defined]


def pattern(tag: int) -> bytes:
    """One grid cell of recognisable, compressible data."""
    return (f"pattern {tag:04d} ".encode() * (GRID // 13 + 1))[:GRID]


def write_image(path: Path, tags: list[int]) -> bytes:
    data = b"".join(pattern(t) for t in tags)
    path.write_bytes(data)
    return data


def image_of(service: Service, point_id: str) -> bytes:
    with service.open_image(point_id, readahead_bytes=0) as image:
        return image.pread(image.size, 0)


def assert_everything_restores(url: str, expected: dict[str, bytes]) -> None:
    """A fresh process's view: every point reads exactly what was backed up; deep verify is clean."""
    fresh = Service(url)
    try:
        points = fresh.list_points()
        assert points, "no point left"
        for p in points:
            assert image_of(fresh, p.id) == expected[p.id], f"point {p.id} reads other bytes"
        report = run(fresh.start_verify(deep=True))
        assert report.ok, report.problems  # type: ignore[attr-defined]
    finally:
        fresh.close()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def repo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (
        str(tmp_path / "repo")
        if request.param == "local"
        else request.getfixturevalue("s3_repo_url")
    )
    init_repository(url, grid_size=GRID)
    return url


@pytest.fixture
def server_and_cli(repo_url: str) -> Iterator[tuple[Service, Service]]:
    """The long-lived process (as `lamina serve`), and another process beside it."""
    server, cli = Service(repo_url), Service(repo_url)
    try:
        yield server, cli
    finally:
        server.close()
        cli.close()


def test_a_prune_elsewhere_never_leaves_a_stale_piece_index(
    server_and_cli: tuple[Service, Service], repo_url: str, tmp_path: Path
) -> None:
    server, cli = server_and_cli
    source = tmp_path / "volume.img"
    expected: dict[str, bytes] = {}
    a = write_image(source, [1, 2, 3, 4, 5, 6, 7, 100])  # the last cell holds pattern A
    expected[run(server.start_backup(str(source), "ns/v")).id] = a  # type: ignore[attr-defined]
    b = write_image(source, [1, 2, 3, 4, 5, 6, 7, 200])  # ... then pattern B
    expected[run(server.start_backup(str(source), "ns/v")).id] = b  # type: ignore[attr-defined]
    run(cli.start_forget(Policy(last=1)))
    pruned = run(cli.start_prune())
    assert pruned.packs_deleted + pruned.packs_repacked > 0  # type: ignore[attr-defined]
    # Pattern A comes back: the server must not deduplicate against the piece prune deleted.
    a = write_image(source, [1, 2, 3, 4, 5, 6, 7, 100])
    expected[run(server.start_backup(str(source), "ns/v")).id] = a  # type: ignore[attr-defined]
    assert_everything_restores(repo_url, expected)
    run(cli.start_prune())  # and later prunes still run
    assert_everything_restores(repo_url, expected)


@pytest.mark.parametrize("change", ["consolidate", "delete"])
def test_a_prune_after_points_changed_elsewhere_keeps_their_maps(
    server_and_cli: tuple[Service, Service], repo_url: str, tmp_path: Path, change: str
) -> None:
    server, cli = server_and_cli
    source = tmp_path / "volume.img"
    expected: dict[str, bytes] = {}
    tags = list(range(1, CELLS + 1))
    for step in range(3):
        tags[step] = 50 + step
        data = write_image(source, tags)
        expected[run(server.start_backup(str(source), "ns/v")).id] = data  # type: ignore[attr-defined]
    server.list_points()  # the server now caches every manifest
    newest = cli.list_points()[-1].id
    if change == "consolidate":
        run(cli.start_consolidate(newest))
    else:
        run(cli.start_delete(cli.list_points()[1].id))
    run(server.start_prune())
    assert_everything_restores(repo_url, expected)
    # and the server's own listing shows the points as they are now
    assert [p.parent for p in server.list_points()] == [p.parent for p in cli.list_points()]


def test_verify_lists_the_points_only_once_its_lock_is_held(
    server_and_cli: tuple[Service, Service], repo_url: str, tmp_path: Path
) -> None:
    server, _other = server_and_cli
    source = tmp_path / "volume.img"
    tags = list(range(1, CELLS + 1))
    ids = []
    for step in range(3):
        tags[step] = 70 + step
        write_image(source, tags)
        ids.append(run(server.start_backup(str(source), "ns/v")).id)  # type: ignore[attr-defined]
    # Another process holds an exclusive lock (a forget in progress) when verify starts.
    other = Repository.open(open_storage(repo_url))
    held = locks.acquire(other, locks.EXCLUSIVE, "forget")
    assert held is not None
    job = server.start_verify()
    _wait_until(lambda: any("lock" in line for line in job.log))
    lifecycle.delete_point(other, other.find_point(ids[0]))
    held.release()
    report = run(job)
    assert report.ok, report.problems  # type: ignore[attr-defined]
    assert report.points == 2  # type: ignore[attr-defined]


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


class VanishingManifests(LocalStorage):
    """A real local repository in which one manifest is deleted between LIST and GET,
    as a concurrent forget does."""

    victim: str | None = None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        listing = list(super().list(prefix))
        if prefix == "manifests/" and self.victim is not None:
            self.delete(f"manifests/{self.victim}")
            self.victim = None
        return iter(listing)


def test_listing_points_while_one_is_forgotten_skips_it(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=GRID)
    service = Service(url)
    source = tmp_path / "volume.img"
    ids = []
    for tag in (1, 2):
        write_image(source, [tag] * CELLS)
        ids.append(run(service.start_backup(str(source), "ns/v")).id)  # type: ignore[attr-defined]
    storage = VanishingManifests(str(tmp_path / "repo"))
    repo = Repository.open(storage)
    storage.victim = ids[0]
    assert [p.id for p in repo.list_points()] == [ids[1]]


def test_deep_verify_names_every_point_that_reads_a_damaged_piece(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=GRID)
    service = Service(url)
    source = tmp_path / "volume.img"
    tags = [1, 2, 3, 4, 5, 6, 7, 8]
    ids = []
    for step in range(3):
        tags[7] = 90 + step  # only the last cell changes: the first cell is shared by all
        write_image(source, tags)
        ids.append(run(service.start_backup(str(source), "ns/v")).id)  # type: ignore[attr-defined]
    repo = Repository.open(open_storage(url))
    repo.load_index()
    shared = repo.resolve(repo.find_point(ids[0]))[0]
    entry = repo.index.get(shared.piece_id)
    assert entry is not None
    pack = tmp_path / "repo" / "packs" / entry.pack_id.hex()[:2] / entry.pack_id.hex()
    damaged = bytearray(pack.read_bytes())
    damaged[entry.offset + entry.stored_size // 2] ^= 0xFF
    pack.write_bytes(bytes(damaged))
    report = run(Service(url).start_verify(deep=True))
    named = {line.split(":")[0] for line in report.problems}  # type: ignore[attr-defined]
    assert named == {f"point {i}" for i in ids}, report.problems  # type: ignore[attr-defined]


def test_a_backup_whose_lock_was_removed_commits_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=GRID)
    repo = Repository.open(open_storage(url))
    source = tmp_path / "volume.img"
    write_image(source, [1] * CELLS)
    lock = locks.acquire(repo, locks.SHARED, "backup")
    assert lock is not None
    locks.remove_locks(Repository.open(open_storage(url)), all_locks=True)  # `unlock --all`
    request = engine.BackupRequest(source=str(source), volume=VolumeRef("local", "ns", "v"))
    with pytest.raises(locks.LockLost, match="removed by another process"):
        engine.backup(repo, request, before_commit=lock.check_held)
    lock.release()
    assert Repository.open(open_storage(url)).list_points() == []


# ------------------------------------------------------------ ambiguous first writes


class AnswerLostOnce(Storage):
    """A real backend whose first put of one key is carried out, but whose answer is lost
    (a transient error after the write, as a reset connection gives)."""

    def __init__(self, inner: Storage, key: str) -> None:
        self.inner = inner
        self.url = inner.url
        self.key = key
        self.lost = 0

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        written = self.inner.put(key, data, if_absent=if_absent, retain_until=retain_until)
        if key == self.key and not self.lost:
            self.lost += 1
            raise StorageError("injected: connection reset after the write")
        return written

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_repo_init_survives_a_lost_answer_to_its_config_write(tmp_path: Path) -> None:
    storage = AnswerLostOnce(open_storage(str(tmp_path / "repo"), create=True), "config")
    repo = Repository.init(storage, grid_size=GRID)
    assert storage.lost == 1
    assert Repository.open(open_storage(str(tmp_path / "repo"))).id == repo.id
    with pytest.raises(LaminaError, match="already exists"):  # a real second init still fails
        Repository.init(open_storage(str(tmp_path / "repo")), grid_size=GRID)


def test_every_put_if_absent_retry_meeting_its_own_object_is_success(tmp_path: Path) -> None:
    inner = open_storage(str(tmp_path / "objects"), create=True)
    lossy = AnswerLostOnce(inner, "manifests/abc")
    retrying = RetryingStorage(lossy, base_delay=0.001)
    assert retrying.put("manifests/abc", b"ours", if_absent=True) is True
    assert lossy.lost == 1
    assert retrying.put("manifests/abc", b"theirs", if_absent=True) is False
    assert inner.get("manifests/abc") == b"ours"


@pytest.mark.s3
def test_repo_init_on_s3_survives_a_500_after_the_config_was_written(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.create_bucket()
    with s3_proxy(s3_env.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        proxy.lose_answer_of("PUT", "/repo/config")
        info = init_repository(f"s3://{bucket}/repo", grid_size=GRID)
        assert proxy.injected == 1  # the server wrote config, the client saw a 500
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint_url)
    assert Service(f"s3://{bucket}/repo").info().id == info.id
