"""The local cache of S3 repositories (backend/engine/cache.py, docs/format.md "Local cache").

Real SeaweedFS behind the counting proxy of tests/support/s3proxy.py: the requests counted
are the HTTP requests lamina sent. Each `Service` stands for a process; one opened with
another LAMINA_CACHE_DIR stands for a process on another machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.engine.cache import ObjectCache
from lamina.backend.engine.lifecycle import Policy
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage import open_storage
from lamina.backend.service import JobState, Service, init_repository
from tests.support.s3proxy import S3Proxy, s3_proxy
from tests.support.seaweedfs import S3Server

pytestmark = pytest.mark.s3

KiB = 1024
GRID = 64 * KiB
CELLS = 16


def pattern(tag: int) -> bytes:
    return (f"cache pattern {tag:05d} ".encode() * (GRID // 20 + 1))[:GRID]


def write_image(path: Path, tags: list[int]) -> bytes:
    data = b"".join(pattern(t) for t in tags)
    path.write_bytes(data)
    return data


def run(job: object) -> object:
    assert job.wait(300)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    return job.result  # type: ignore[attr-defined]


@dataclass
class Proxied:
    url: str
    proxy: S3Proxy
    monkeypatch: pytest.MonkeyPatch
    tmp: Path

    def gets(self) -> int:
        return self.proxy.requests["GET"]

    def service(self, cache: str | Path | None) -> Service:
        """A new process: with the cache in ``cache``, or none ("off")."""
        if cache == "off":
            self.monkeypatch.setenv("LAMINA_CACHE", "off")
        else:
            self.monkeypatch.delenv("LAMINA_CACHE", raising=False)
            self.monkeypatch.setenv("LAMINA_CACHE_DIR", str(cache))
        service = Service(self.url)
        service.repo  # noqa: B018 - opened now, under this environment
        return service

    def image(self, service: Service, point_id: str) -> bytes:
        target = self.tmp / f"restored-{point_id}.img"
        target.unlink(missing_ok=True)
        run(service.start_restore(point_id, str(target)))
        return target.read_bytes()


@pytest.fixture
def proxied(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Proxied]:
    bucket = s3_env.create_bucket()
    with s3_proxy(s3_env.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        url = f"s3://{bucket}/repo"
        init_repository(url, grid_size=GRID)
        yield Proxied(url, proxy, monkeypatch, tmp_path)


def build_chain(service: Service, source: Path, steps: int) -> dict[str, bytes]:
    """A full point and ``steps`` incrementals with changed ranges, each rewriting one cell."""
    tags = list(range(CELLS))
    data = write_image(source, tags)
    expected = {run(service.start_backup(str(source), "ns/db")).id: data}  # type: ignore[attr-defined]
    for step in range(steps):
        cell = (3 * step + 1) % CELLS
        tags[cell] = 1000 + step
        data = write_image(source, tags)
        point = run(
            service.start_backup(str(source), "ns/db", changed_ranges=[(cell * GRID, GRID)])
        )
        expected[point.id] = data  # type: ignore[attr-defined]
    return expected


def cache_of(service: Service) -> ObjectCache:
    cache = service.repo.cache
    assert cache is not None
    return cache


def test_a_new_process_starts_from_the_cache_with_far_fewer_gets(proxied: Proxied) -> None:
    source = proxied.tmp / "db.img"
    write_image(source, list(range(CELLS)))
    cache_dir = proxied.tmp / "cache"
    with contextlib.closing(proxied.service(cache_dir)) as first:
        expected = build_chain(first, source, steps=5)
    newest = list(expected)[-1]
    listing = open_storage(proxied.url)
    segments = sum(1 for _ in listing.list("index/"))
    chain = len(expected)
    assert segments >= chain

    def restore_gets(cache: str | Path) -> int:
        with contextlib.closing(proxied.service(cache)) as service:
            before = proxied.gets()
            assert proxied.image(service, newest) == expected[newest]
            return proxied.gets() - before

    cold, warm = restore_gets("off"), restore_gets(cache_dir)
    # Every segment, every map of the chain and every manifest came from the cache.
    assert warm <= cold - segments - 2 * chain, (warm, cold)

    def incremental_gets(cache: str | Path, cell: int) -> tuple[int, Service]:
        with open(source, "r+b") as f:
            f.seek(cell * GRID)
            f.write(pattern(5000 + cell))
        service = proxied.service(cache)
        before = proxied.gets()
        point = run(
            service.start_backup(str(source), "ns/db", changed_ranges=[(cell * GRID, GRID)])
        )
        expected[point.id] = source.read_bytes()  # type: ignore[attr-defined]
        return proxied.gets() - before, service

    warm_incr, warm_service = incremental_gets(cache_dir, 5)
    cold_incr, cold_service = incremental_gets("off", 6)
    assert cache_of(warm_service).hits >= segments + chain
    assert warm_incr <= cold_incr - segments - chain, (warm_incr, cold_incr)
    warm_service.close()
    cold_service.close()
    with contextlib.closing(proxied.service("off")) as fresh:
        for point_id, data in expected.items():
            assert proxied.image(fresh, point_id) == data


def test_damaged_cache_files_are_detected_and_replaced(proxied: Proxied) -> None:
    source = proxied.tmp / "db.img"
    write_image(source, list(range(CELLS)))
    cache_dir = proxied.tmp / "cache"
    with contextlib.closing(proxied.service(cache_dir)) as first:
        expected = build_chain(first, source, steps=3)
    repo_folder = next(p for p in cache_dir.iterdir() if p.is_dir())
    files = [p for p in repo_folder.rglob("*") if p.is_file()]
    assert len(files) >= 3 * len(expected)  # segments, maps and manifests were kept
    for i, path in enumerate(files):  # every other file: a flipped bit; the rest: truncated
        blob = bytearray(path.read_bytes())
        if i % 2:
            blob[len(blob) // 2] ^= 0x10
        else:
            del blob[len(blob) // 3 :]
        path.write_bytes(blob)
    # And one copy whose cache file is sound but whose object is not: a forged map.
    newest = list(expected)[-1]
    ObjectCache(repo_folder, 1 << 30).put(f"maps/{newest}", b"LAMN\x03\x00forged map")

    with contextlib.closing(proxied.service(cache_dir)) as second:
        for point_id, data in expected.items():
            assert proxied.image(second, point_id) == data
        cache = cache_of(second)
        assert cache.rejected >= len(files) // 2
        assert cache.hits == 0 or cache.rejected > 0
        # Replaced: the copies now held are the repository's own objects.
        storage = open_storage(proxied.url)
        for key in [f"maps/{newest}", *[info.key for info in storage.list("index/")]]:
            assert cache.get(key) == storage.get(key)

    with contextlib.closing(proxied.service(cache_dir)) as third:
        before = cache_of(third).rejected
        for point_id, data in expected.items():
            assert proxied.image(third, point_id) == data
        assert cache_of(third).rejected == before  # nothing damaged is left
        assert cache_of(third).hits > 0


@pytest.mark.parametrize("change", ["delete", "consolidate", "forget"])
def test_what_another_machine_removed_never_comes_back_from_the_cache(
    proxied: Proxied, change: str
) -> None:
    source = proxied.tmp / "db.img"
    write_image(source, list(range(CELLS)))
    ours = proxied.tmp / "cache-here"
    long_lived = proxied.service(ours)
    try:
        expected = build_chain(long_lived, source, steps=3)
        ids = list(expected)
        for point_id in ids:  # everything read once: manifests, maps and segments cached
            assert proxied.image(long_lived, point_id) == expected[point_id]
        cached_manifests = {
            point_id
            for point_id in ids
            if (cache_of(long_lived)._path(f"manifests/{point_id}") or Path("/")).exists()
        }
        assert cached_manifests == set(ids)

        # Another machine (its own cache) changes the chain, then prunes.
        with contextlib.closing(proxied.service(proxied.tmp / "cache-elsewhere")) as other:
            if change == "delete":
                run(other.start_delete(ids[1]))
                removed = {ids[1]}
            elif change == "consolidate":
                run(other.start_consolidate(ids[-1]))
                removed = set()
            else:
                run(other.start_forget(Policy(last=1)))
                removed = set(ids[:-1])
            run(other.start_prune())
        remaining = [p for p in ids if p not in removed]
        truth = {p.id: p for p in Repository.open(open_storage(proxied.url)).list_points()}
        assert set(truth) == set(remaining)

        def check(service: Service) -> None:
            listed = {p.id for p in service.list_points()}
            assert listed == set(remaining), (
                f"removed points resurrected: {listed - set(remaining)}"
            )
            for point_id in remaining:
                assert proxied.image(service, point_id) == expected[point_id]
                point = service.repo.find_point(point_id)
                assert point.manifest == truth[point_id].manifest, "a stale manifest was used"
            report = run(service.start_verify(deep=True))
            assert report.ok, report.problems  # type: ignore[attr-defined]
            # Segments the prune removed are gone from the cache too.
            cache = cache_of(service)
            listed_segments = {info.key for info in open_storage(proxied.url).list("index/")}
            kept = {p.name for p in (cache.folder / "index").iterdir()}
            allowed = {path.name for key in listed_segments if (path := cache._path(key))}
            assert kept <= allowed

        check(long_lived)
        with contextlib.closing(proxied.service(ours)) as fresh:  # a new process, same cache
            check(fresh)
    finally:
        long_lived.close()


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_verify_reads_the_repository_not_the_cache(proxied: Proxied, damage: str) -> None:
    source = proxied.tmp / "db.img"
    write_image(source, list(range(CELLS)))
    cache_dir = proxied.tmp / "cache"
    with contextlib.closing(proxied.service(cache_dir)) as first:
        expected = build_chain(first, source, steps=2)
    middle = list(expected)[1]
    storage = open_storage(proxied.url)
    key = f"maps/{middle}"
    if damage == "deleted":
        storage.delete(key)
        line = f"point {middle}: the extent map of point {middle} is missing"
    else:
        blob = bytearray(storage.get(key))
        blob[len(blob) // 2] ^= 0x01
        storage.put(key, bytes(blob))
        line = f"point {middle}: extent map of point {middle}"
    with contextlib.closing(proxied.service(cache_dir)) as second:
        assert cache_of(second).get(key) is not None  # the cache still holds a sound copy
        for ref in (middle, None):  # the point itself, and every point
            report = run(second.start_verify(ref))
            assert not report.ok  # type: ignore[attr-defined]
            assert any(p.startswith(line) for p in report.problems), report.problems  # type: ignore[attr-defined]
