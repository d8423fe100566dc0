"""The repository as a tree of paths, without FUSE: layout, latest link, files/, errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.engine.fsview import RepositoryView, point_dir_name, time_ns
from lamina.backend.service import JobState, PointInfo, Service, init_repository
from tests.support.ext4_trees import (
    BASE_TIME,
    MiB,
    change_file,
    describe_tree,
    freeze,
    make_source_tree,
    mkfs_ext4,
    sha256_file,
)


def _backup(service: Service, image: Path, volume: str) -> PointInfo:
    job = service.start_backup(str(image), volume)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    result: PointInfo = job.result
    return result


@dataclass(frozen=True)
class ViewRepo:
    service: Service
    points: list[PointInfo]  # two points of c1/ns/db, oldest first
    raw: PointInfo  # c2/other/raw: random bytes, no filesystem
    sources: list[Path]
    image: Path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ViewRepo:
    """Two points of an ext4 volume, one point of a volume without a filesystem."""
    tmp = tmp_path_factory.mktemp("view")
    init_repository(str(tmp / "repo"), grid_size=256 * 1024)
    service = Service(str(tmp / "repo"))
    source = make_source_tree(tmp / "src")
    image = mkfs_ext4(source, tmp / "db.img", 16 * MiB)
    first = _backup(service, image, "c1/ns/db")
    frozen_first = freeze(source, tmp / "src-1")
    change_file(image, source, "etc/hosts", b"10.0.0.1 db\n", BASE_TIME + 99_000)
    second = _backup(service, image, "c1/ns/db")
    raw = tmp / "raw.img"
    raw.write_bytes(os.urandom(MiB))
    third = _backup(service, raw, "c2/other/raw")
    return ViewRepo(service, [first, second], third, [frozen_first, source], image)


def _view_tree(view: RepositoryView, top: str) -> dict[str, tuple[object, ...]]:
    """The same description as describe_tree(), read through the view."""
    out: dict[str, tuple[object, ...]] = {}

    def walk(path: str, rel: str) -> None:
        for name in view.listdir(path):
            child, child_rel = f"{path}/{name}", f"{rel}{name}"
            node = view.stat(child)
            if node.kind == "symlink":
                out[child_rel] = ("symlink", view.readlink(child), node.mtime_ns)
            elif node.kind == "dir":
                out[child_rel] = ("dir", stat.S_IMODE(node.mode))
                walk(child, child_rel + "/")
            else:
                data = view.open(child).read(0, node.size + 10)
                out[child_rel] = (
                    "file",
                    stat.S_IMODE(node.mode),
                    node.size,
                    node.mtime_ns,
                    hashlib.sha256(data).hexdigest(),
                )

    walk(top, "")
    out.pop("lost+found", None)
    return out


def test_tree_layout_and_latest_link(repo: ViewRepo) -> None:
    service = repo.service
    first, second = repo.points
    view = service.open_view()
    try:
        assert view.listdir("/") == ["c1", "c2"]
        assert view.listdir("/c1") == ["ns"]
        assert view.listdir("/c1/ns") == ["db"]
        dirs = [point_dir_name(first), point_dir_name(second)]
        assert view.listdir("/c1/ns/db") == sorted([*dirs, "latest"])
        assert dirs[0][:18] <= dirs[1][:18]  # names sort by time (to the second)
        assert dirs[0].startswith(first.created[:10]) and dirs[0].endswith(first.id)
        latest = view.stat("/c1/ns/db/latest")
        assert latest.kind == "symlink" and view.readlink("/c1/ns/db/latest") == dirs[1]
        point_dir = view.stat(f"/c1/ns/db/{dirs[0]}")
        assert point_dir.kind == "dir" and point_dir.mtime_ns == time_ns(first.created)
        assert view.stat("/c1/ns/db").mtime_ns == time_ns(second.created)
        assert view.listdir(f"/c1/ns/db/{dirs[0]}") == ["disk.img", "files", "manifest.json"]
        disk = view.stat(f"/c1/ns/db/{dirs[0]}/disk.img")
        assert disk.kind == "file" and disk.size == first.capacity
        assert stat.S_IMODE(disk.mode) == 0o444
        manifest = view.open(f"/c1/ns/db/{dirs[1]}/manifest.json").read(0, 1 << 20)
        assert json.loads(manifest)["id"] == second.id
        assert view.stat(f"/c1/ns/db/{dirs[1]}/manifest.json").size == len(manifest)
    finally:
        view.close()


def test_files_match_the_source_of_each_point(repo: ViewRepo) -> None:
    service = repo.service
    view = service.open_view()
    try:
        for point, source in zip(repo.points, repo.sources, strict=True):
            top = f"/c1/ns/db/{point_dir_name(point)}/files"
            assert _view_tree(view, top) == describe_tree(source)
        # the change between the points shows in the newer one only
        older, newer = (f"/c1/ns/db/{point_dir_name(p)}/files/etc/hosts" for p in repo.points)
        assert view.open(older).read(0, 100) == b"127.0.0.1 localhost\n"
        assert view.open(newer).read(0, 100) == b"10.0.0.1 db\n"
        assert view.stat(newer).mtime_ns == (BASE_TIME + 99_000) * 10**9
    finally:
        view.close()


def test_disk_image_reads_the_volume(repo: ViewRepo) -> None:
    service = repo.service
    second = repo.points[1]
    image = repo.image
    view = service.open_view(second.id)  # one point at the root
    try:
        assert view.listdir("/") == ["disk.img", "files", "manifest.json"]
        handle = view.open("/disk.img")
        data = b"".join(handle.read(o, MiB) for o in range(0, second.capacity, MiB))
        assert hashlib.sha256(data).hexdigest() == sha256_file(image)
        assert handle.read(second.capacity, 10) == b""
    finally:
        view.close()


def test_volume_without_filesystem_says_why(repo: ViewRepo) -> None:
    service = repo.service
    raw = repo.raw
    view = service.open_view()
    try:
        top = f"/c2/other/raw/{point_dir_name(raw)}"
        assert view.listdir(top) == ["disk.img", "files.unavailable", "manifest.json"]
        text = view.open(f"{top}/files.unavailable").read(0, 4096).decode()
        assert "no ext4 or xfs filesystem" in text and text.endswith("\n")
        assert view.stat(f"{top}/files.unavailable").size == len(text.encode())
        with pytest.raises(FileNotFoundError):
            view.stat(f"{top}/files")
    finally:
        view.close()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/nope", errno.ENOENT),
        ("/c1/ns/nope", errno.ENOENT),
        ("/c1/ns/db/2020-01-01T000000Z-0123456789abcdef", errno.ENOENT),
        ("/c1/ns/db/latest/nothing", errno.ENOENT),
        ("LATEST/files/no/such/file", errno.ENOENT),
        ("LATEST/disk.img/below", errno.ENOTDIR),
        ("LATEST/files/etc/hosts/below", errno.ENOTDIR),
    ],
)
def test_bad_paths_give_errno(repo: ViewRepo, path: str, code: int) -> None:
    service = repo.service
    view = service.open_view()
    try:
        path = path.replace("LATEST", f"/c1/ns/db/{point_dir_name(repo.points[1])}")
        with pytest.raises(OSError) as failure:
            view.stat(path)
        assert failure.value.errno == code
    finally:
        view.close()


def test_symlinks_are_never_followed(repo: ViewRepo) -> None:
    service = repo.service
    view = service.open_view(repo.points[0].id)
    try:
        node = view.stat("/files/data/escape-link")
        assert node.kind == "symlink" and stat.S_ISLNK(node.mode)
        assert view.readlink("/files/data/escape-link") == "../../../../etc/passwd"
        assert view.readlink("/files/absolute-link") == "/etc/passwd"
        with pytest.raises(OSError) as failure:
            view.open("/files/absolute-link")
        assert failure.value.errno == errno.EACCES
        with pytest.raises(OSError) as failure:
            view.open("/files/data")
        assert failure.value.errno == errno.EISDIR
    finally:
        view.close()
