"""The local object cache on its own: checked files, tags, bounds, and when it is used at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.backend.engine.cache import ObjectCache, cache_root, open_cache
from lamina.backend.errors import UsageError

REPO_ID = "0123456789abcdef0123456789abcdef"


def cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_a_copy_comes_back_only_under_its_key_and_tag(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "c", 1 << 20)
    cache.put("index/aa", b"segment")
    cache.put("manifests/p1", b"manifest", tag="gen-1")
    assert cache.get("index/aa") == b"segment"
    assert cache.get("manifests/p1", "gen-1") == b"manifest"
    assert cache.get("manifests/p1", "gen-2") is None  # another generation: not current
    assert cache.get("manifests/p1", "gen-1") is None  # and the stale copy is gone
    assert cache.get("index/bb") is None
    assert cache.get("packs/aa/bb") is None  # packs are never cached
    cache.put("packs/aa/bb", b"pack")
    assert cache.get("packs/aa/bb") is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_a_damaged_cache_file_is_ignored_and_removed(tmp_path: Path, damage: str) -> None:
    cache = ObjectCache(tmp_path / "c", 1 << 20)
    cache.put("maps/p1", b"x" * 1000)
    (path,) = cache_files(tmp_path / "c")
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "truncate":
        del blob[-5:]
    elif damage == "garbage":
        blob = bytearray(os.urandom(len(blob)))
    else:
        blob = bytearray()
    path.write_bytes(blob)
    assert cache.get("maps/p1") is None
    assert cache.rejected == 1
    assert not path.exists()
    cache.put("maps/p1", b"x" * 1000)  # replaced by the next fresh download
    assert cache.get("maps/p1") == b"x" * 1000


def test_hostile_keys_stay_inside_the_cache_folder(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "c", 1 << 20)
    for key in ["maps/../../../escape", "index/\x1b[2J", "manifests/" + "a" * 600]:
        cache.put(key, b"data")
        assert cache.get(key) == b"data"
    assert {p.parent.parent for p in cache_files(tmp_path / "c")} == {tmp_path / "c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_the_size_stays_bounded_and_the_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "c", 100_000)
    for i in range(10):
        cache.put(f"index/{i}", bytes([i]) * 20_000)
        os.utime(cache._path(f"index/{i}"), (1000 + i, 1000 + i))  # type: ignore[arg-type]
    assert sum(p.stat().st_size for p in cache_files(tmp_path / "c")) <= 100_000
    assert cache.get("index/9") == bytes([9]) * 20_000
    assert cache.get("index/0") is None  # the oldest went first


def test_retain_removes_what_a_listing_no_longer_holds(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "c", 1 << 20)
    for key in ["index/a", "index/b", "index/c", "maps/a"]:
        cache.put(key, b"data")
    assert cache.retain("index", {"index/b", "index/new"}) == 2
    assert cache.get("index/a") is None and cache.get("index/c") is None
    assert cache.get("index/b") == b"data" and cache.get("maps/a") == b"data"


def test_where_the_cache_lives_and_how_it_is_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAMINA_CACHE_DIR", raising=False)
    monkeypatch.delenv("LAMINA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lamina"
    cache = open_cache(REPO_ID, "s3://bucket/repo")
    assert cache is not None and cache.folder == tmp_path / "xdg" / "lamina" / REPO_ID
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "mine"))
    cache = open_cache(REPO_ID, "s3://bucket/repo")
    assert cache is not None and cache.folder == tmp_path / "mine" / REPO_ID
    assert open_cache(REPO_ID, str(tmp_path / "local-repo")) is None  # as fast as a cache
    assert open_cache("../../etc", "s3://bucket/repo") is None  # the id names a folder
    monkeypatch.setenv("LAMINA_CACHE", "off")
    assert open_cache(REPO_ID, "s3://bucket/repo") is None


def test_a_bad_cache_size_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_CACHE_SIZE", "lots")
    with pytest.raises(UsageError, match=r"^LAMINA_CACHE_SIZE is not a size: 'lots'"):
        open_cache(REPO_ID, "s3://bucket/repo")
    monkeypatch.setenv("LAMINA_CACHE_SIZE", "0")
    assert open_cache(REPO_ID, "s3://bucket/repo") is None


def test_an_unwritable_cache_folder_means_no_cache_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "file"))
    assert open_cache(REPO_ID, "s3://bucket/repo") is None


def test_the_bound_counts_what_other_processes_left_and_the_least_recently_used_go(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "c"
    earlier = ObjectCache(folder, 100_000)  # another process, before this one
    for i in range(8):
        earlier.put(f"maps/p{i}", bytes([i]) * 10_000)
        path = earlier._path(f"maps/p{i}")
        assert path is not None
        os.utime(path, (1000 + i, 1000 + i))  # p0 the least recently used
    cache = ObjectCache(folder, 100_000)
    assert cache.get("maps/p7") == bytes([7]) * 10_000  # used now: evicted last
    for i in range(8, 11):
        cache.put(f"maps/p{i}", bytes([i]) * 10_000)
    assert sum(p.stat().st_size for p in cache_files(folder)) <= 100_000
    kept = {i for i in range(11) if cache.get(f"maps/p{i}") is not None}
    assert kept == {2, 3, 4, 5, 6, 7, 8, 9, 10}  # the two oldest went, at the bound
