"""Every command that writes checks its target first and fails in one plain line.

Real `lamina` processes against real targets: a folder, /proc, a read-only tmpfs mount, a
full tmpfs mount, over-long names. Nothing is ever left behind (no `.lamina-partial`).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.service import JobState, Service, init_repository
from tests.support.api_server import lamina_serve
from tests.support.ext4_trees import make_source_tree, mkfs_ext4
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
MiB = 1024 * 1024


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lamina: error: "), lines[0]
    assert "internal error" not in lines[0] and "Errno" not in lines[0], lines[0]
    return lines[0].removeprefix("lamina: error: ")


def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "read-only", "ro", "size=1m")


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of 1 MiB: a restore of a bigger volume runs out of space mid-write."""
    yield from tmpfs(tmp_path / "full", "size=1m")


@dataclass(frozen=True)
class Repo:
    url: str
    raw: str  # a point of a 4 MiB volume without a filesystem
    files: str  # a point of an ext4 volume


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("targets")
    url = str(root / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url)
    raw = service.start_backup(str(make_volume(root / "raw.img", 4 * MiB, seed=80)), "t/raw")
    ext4 = service.start_backup(
        str(mkfs_ext4(make_source_tree(root / "tree"), root / "ext4.img", 16 * MiB)), "t/ext4"
    )
    for job in (raw, ext4):
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    return Repo(url, raw.result.id, ext4.result.id)


def partials(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*") if p.name.endswith(".lamina-partial")]


# ---------------------------------------------------------------------------- restore


def test_restore_refuses_bad_targets_before_writing(
    repo: Repo, tmp_path: Path, read_only: Path
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    long_name = "n" * 250 + ".img"  # fits the filesystem, not with the .lamina-partial suffix
    cases = {
        str(folder): f"{folder} is a folder; give a file or block device to restore to",
        "/proc/lamina.img": "cannot create /proc/lamina.img: its folder does not take new files",
        str(read_only / "x.img"): f"cannot create {read_only}/x.img: the filesystem is read-only",
        str(tmp_path / long_name): "the file name is too long: at most 240 bytes "
        "(lamina writes it as NAME.lamina-partial first)",
        str(tmp_path / ("m" * 300)): "the file name is too long: at most 240 bytes "
        "(lamina writes it as NAME.lamina-partial first)",
        str(tmp_path / "missing" / "x.img"): f"folder {tmp_path}/missing does not exist",
        "/dev/null": "/dev/null is not a regular file or a block device",
    }
    for target, expected in cases.items():
        result = lamina("restore", "--repo", repo.url, repo.raw, target)
        assert one_line_error(result) == expected, target
        assert result.returncode == 2
    assert partials(tmp_path) == [] and list(folder.iterdir()) == []


def test_a_restore_that_runs_out_of_space_leaves_nothing_behind(repo: Repo, full: Path) -> None:
    result = lamina("restore", "--repo", repo.url, repo.raw, str(full / "disk.img"))
    assert one_line_error(result) == f"cannot write {full}/disk.img: No space left on device"
    assert list(full.iterdir()) == []


def test_restore_over_an_existing_file_needs_overwrite(repo: Repo, tmp_path: Path) -> None:
    target = tmp_path / "kept.img"
    target.write_bytes(b"precious")
    result = lamina("restore", "--repo", repo.url, repo.raw, str(target))
    assert one_line_error(result) == f"{target} exists; choose a new file, or pass --overwrite"
    assert target.read_bytes() == b"precious"
    ok = lamina("restore", "--repo", repo.url, repo.raw, str(target), "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert target.stat().st_size == 4 * MiB and partials(tmp_path) == []


def test_a_partial_file_being_written_is_not_taken_over(repo: Repo, tmp_path: Path) -> None:
    target = tmp_path / "busy.img"
    partial = tmp_path / "busy.img.lamina-partial"
    with open(partial, "wb") as writer:  # as a restore still running holds it
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        result = lamina("restore", "--repo", repo.url, repo.raw, str(target))
        assert one_line_error(result) == f"another restore is writing {target} right now"
        assert partial.exists() and not target.exists()
    # unlocked, it is what a crash left behind: the next restore replaces it
    ok = lamina("restore", "--repo", repo.url, repo.raw, str(target))
    assert ok.returncode == 0, ok.stderr
    assert target.stat().st_size == 4 * MiB and not partial.exists()


# ---------------------------------------------------------------------------- files get


def test_files_get_refuses_bad_target_folders(repo: Repo, tmp_path: Path, read_only: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = {
        str(a_file): f"{a_file} is not a folder (or a name on its path is a file)",
        str(read_only): f"cannot write in folder {read_only}: the filesystem is read-only",
        str(read_only / "new"): f"cannot write in folder {read_only}: the filesystem is read-only",
        "/proc/lamina-files": "cannot make a folder in /proc: it does not take new folders",
        str(tmp_path / ("d" * 300)): "the name "
        + "d" * 40
        + "... is too long: at most 255 bytes here",
    }
    for target, expected in cases.items():
        result = lamina("files", "get", "--repo", repo.url, repo.files, "/etc", "--to", target)
        assert one_line_error(result) == expected, target
    assert a_file.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "read-only"]


def test_files_get_over_a_server_checks_the_local_target(
    repo: Repo, tmp_path: Path, read_only: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with lamina_serve(repo.url, tmp_path / "token") as server:
        remote = ["--server", server.address, "--token-file", str(tmp_path / "token")]
        for target, expected in {
            str(a_file): f"{a_file} is not a folder (or a name on its path is a file)",
            str(
                read_only / "new"
            ): f"cannot use folder {read_only}/new: the filesystem is read-only",
        }.items():
            result = lamina("files", "get", *remote, repo.files, "/etc", "--to", target)
            assert one_line_error(result) == expected, target
    assert a_file.read_text() == "not a folder"


# ---------------------------------------------------------------------------- repo init, mount


def test_repo_init_refuses_folders_it_cannot_write(tmp_path: Path, read_only: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        str(a_file): f"{a_file} is not a folder (or a name on its path is a file)",
        str(read_only): f"cannot write in folder {read_only}: the filesystem is read-only",
        str(read_only / "repo"): f"cannot write in folder {read_only}: the filesystem is read-only",
        "/proc/lamina-repo": "cannot make a folder in /proc: it does not take new folders",
    }
    for target, expected in cases.items():
        assert one_line_error(lamina("repo", "init", target)) == expected, target


def test_service_mount_refuses_a_file_and_a_read_only_folder(
    repo: Repo, tmp_path: Path, read_only: Path
) -> None:
    from lamina.backend.service import TargetError

    service = Service(repo.url)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(TargetError, match=f"^mount point {a_file} is not a folder$"):
        service.mount(repo.raw, str(a_file))
    with pytest.raises(
        TargetError,
        match=f"^cannot make the mount point {read_only}/m: Read-only file system$",
    ):
        service.mount(repo.raw, str(read_only / "m"))
    assert service.list_mounts() == []
    service.close()
