"""`lamina files ls` and `lamina files get`: listing and extraction without a mount,
including images whose names and symlinks try to escape the target folder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.service import JobState, Service, init_repository
from tests.support.ext4_trees import (
    MiB,
    describe_tree,
    make_source_tree,
    mkfs_ext4,
    sha256_file,
)

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class Repo:
    url: str
    point: str
    source: Path
    raw_point: str


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tmp = tmp_path_factory.mktemp("files")
    url = str(tmp / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url)
    source = make_source_tree(tmp / "src")
    image = mkfs_ext4(source, tmp / "vol.img", 16 * MiB)
    job = service.start_backup(str(image), "files")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    raw = tmp / "raw.img"
    raw.write_bytes(bytes(MiB))
    raw_job = service.start_backup(str(raw), "raw")
    raw_job.wait()
    assert raw_job.state == JobState.SUCCEEDED, raw_job.error
    return Repo(url, job.result.id, source, raw_job.result.id)


def test_ls_plain_long_and_json(repo: Repo) -> None:
    plain = lamina("files", "ls", "--repo", repo.url, repo.point)
    assert plain.returncode == 0, plain.stderr
    expected = sorted([*os.listdir(repo.source), "lost+found"])
    assert plain.stdout.splitlines() == expected

    long = lamina("files", "ls", "--repo", repo.url, repo.point[:6], "/data", "-l")
    assert long.returncode == 0, long.stderr
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in long.stdout.splitlines()
    }
    assert lines["random.bin"].startswith("-rw-r--r--") and " 700000 " in lines["random.bin"]
    assert lines["deep"].startswith("drwx")
    assert lines["escape-link"].startswith("l") and lines["escape-link"].endswith(
        "escape-link -> ../../../../etc/passwd"
    )

    as_json = lamina("files", "ls", "--repo", repo.url, repo.point, "/etc", "--json")
    assert as_json.returncode == 0, as_json.stderr
    entries = {e["name"]: e for e in json.loads(as_json.stdout)}
    assert set(entries) == {"hosts", "secret"}
    secret = os.lstat(repo.source / "etc" / "secret")
    assert entries["secret"]["mode"] == "0600" and entries["secret"]["size"] == secret.st_size
    assert entries["secret"]["mtime_ns"] == secret.st_mtime_ns

    one = lamina("files", "ls", "--repo", repo.url, repo.point, "/etc/hosts", "--json")
    assert [e["name"] for e in json.loads(one.stdout)] == ["hosts"]


def test_get_files_directories_and_root(repo: Repo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    got = lamina(
        "files", "get", "--repo", repo.url, repo.point, "/etc/secret", "/data", "--to", str(out)
    )
    assert got.returncode == 0, got.stderr
    assert "extracted" in got.stdout
    assert sorted(os.listdir(out)) == ["data", "secret"]
    assert describe_tree(out / "data", with_dir_times=True) == describe_tree(
        repo.source / "data", with_dir_times=True
    )
    assert describe_tree(out)["secret"] == describe_tree(repo.source / "etc")["secret"]
    assert os.readlink(out / "data" / "escape-link") == "../../../../etc/passwd"
    # holes stay holes
    sparse = out / "data" / "sparse.bin"
    assert os.stat(sparse).st_blocks * 512 < os.path.getsize(sparse)

    everything = tmp_path / "all"
    got = lamina(
        "files", "get", "--repo", repo.url, repo.point, "/", "--to", str(everything), "--json"
    )
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["skipped"] == [] and report["symlinks"] == 3
    seen = describe_tree(everything)
    seen.pop("lost+found")
    assert seen == describe_tree(repo.source)
    assert stat.S_IMODE(os.stat(everything / "run.sh").st_mode) == 0o755


def test_get_never_replaces_and_reports_missing(repo: Repo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "hosts").write_text("mine\n")
    got = lamina(
        "files", "get", "--repo", repo.url, repo.point, "/etc/hosts", "/etc/nothing", "/run.sh",
        "--to", str(out),
    )  # fmt: skip
    assert got.returncode == 1
    assert (out / "hosts").read_text() == "mine\n"
    assert "skipped /etc/hosts: already exists" in got.stderr
    assert "skipped /etc/nothing" in got.stderr
    assert (out / "run.sh").read_text() == (repo.source / "run.sh").read_text()


def test_one_line_errors(repo: Repo, tmp_path: Path) -> None:
    for args in (
        ["files", "ls", "--repo", repo.url, "ffffffff"],
        ["files", "ls", "--repo", repo.url, repo.point, "/no/such"],
        ["files", "ls", "--repo", repo.url, repo.raw_point],
        ["files", "get", "--repo", repo.url, repo.point, "../etc", "--to", str(tmp_path)],
    ):
        result = lamina(*args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamina: error: "), result.stderr
    raw = lamina("files", "ls", "--repo", repo.url, repo.raw_point)
    assert "no ext4 or xfs filesystem" in raw.stderr


def test_extract_job_reports_progress_in_bytes(repo: Repo, tmp_path: Path) -> None:
    service = Service(repo.url)
    events = []
    job = service.start_extract(repo.point, ["/data"], str(tmp_path / "x"))
    job.subscribe(lambda j: events.append(j.progress))
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    sizes = sum(
        p.stat().st_size
        for p in (repo.source / "data").rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    assert job.result.bytes == sizes
    final = [e for e in events if e is not None][-1]
    assert final.phase == "done" and final.total == sizes and final.done == sizes
    listed = service.list_files(repo.point, "/data")
    assert [e.name for e in listed] == sorted(os.listdir(repo.source / "data"))


# ---------------------------------------------------------------------- hostile images


def _patch_names(image: Path, replacements: list[tuple[bytes, bytes]]) -> None:
    """Rename directory entries in place: (name_len, file_type, old name) -> new name."""
    data = bytearray(image.read_bytes())
    for old, new in replacements:
        assert len(old) == len(new) + 2
        count = data.count(old)
        assert count >= 1, old
        data[:] = data.replace(old, old[:2] + new)
    image.write_bytes(bytes(data))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[str, str, Path]:
    """An ext4 image whose names and symlinks try to get out of the target folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "normal.txt").write_text("fine\n")
    (src / "new\nline.txt").write_text("a newline in the name is legal\n")
    (src / "aQb").write_text("would be a/b\n")
    (src / "xQy").write_text("would hold a NUL\n")
    (src / "Q1").write_text("would be ..\n")
    (src / "abs-link").symlink_to("/etc/passwd")
    (src / "esc-link").symlink_to("../../../../../../etc/passwd")
    (src / "dd").mkdir()
    (src / "dd" / "inner.txt").write_text("written through dd\n")
    (src / "de").symlink_to(str(outside))  # becomes a second "dd", a link out
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")
    (src / "sub" / "Q2").write_text("would be .. inside sub\n")
    image = mkfs_ext4(src, tmp_path / "hostile.img", 8 * MiB, "^metadata_csum")
    _patch_names(
        image,
        [
            (bytes([3, 1]) + b"aQb", b"a/b"),
            (bytes([3, 1]) + b"xQy", b"x\0y"),
            (bytes([2, 1]) + b"Q1", b".."),
            (bytes([2, 1]) + b"Q2", b".."),
            (bytes([2, 7]) + b"de", b"dd"),
        ],
    )
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url)
    job = service.start_backup(str(image), "hostile")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    return url, job.result.id, outside


def test_hostile_names_never_escape_the_target(
    hostile: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, point, outside = hostile
    passwd = sha256_file("/etc/passwd")
    target = tmp_path / "target" / "inner"
    target.mkdir(parents=True)
    got = lamina("files", "get", "--repo", url, point, "/", "--to", str(target))
    assert got.returncode == 1, got.stderr
    warnings = got.stderr.strip().splitlines()
    assert "lamina: warning: skipped /a/b: the name contains '/'" in warnings
    assert "lamina: warning: skipped /x\\x00y: the name contains a NUL byte" in warnings
    # nothing outside the target changed
    assert os.listdir(outside) == []
    assert sha256_file("/etc/passwd") == passwd
    assert sorted(os.listdir(tmp_path / "target")) == ["inner"]
    # what could be extracted was, symlinks as links
    assert (target / "normal.txt").read_text() == "fine\n"
    assert (target / "new\nline.txt").read_text() == "a newline in the name is legal\n"
    assert os.readlink(target / "abs-link") == "/etc/passwd"
    assert os.readlink(target / "esc-link") == "../../../../../../etc/passwd"
    assert os.readlink(target / "sub" / "up") == ".."
    assert not (target / "dd").is_symlink()  # one of the two "dd" entries: never the link out
    assert (target / "dd" / "inner.txt").read_text() == "written through dd\n"
    names = {p.name for p in target.rglob("*")}
    assert not any("/" in n or "\0" in n or n in (".", "..") for n in names)


def test_symlinks_already_in_the_target_are_not_followed(
    hostile: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, point, outside = hostile
    target = tmp_path / "target"
    target.mkdir()
    (target / "dd").symlink_to(outside)  # a trap: extracting dd/ must not write through it
    (target / "normal.txt").symlink_to(outside / "planted")
    got = lamina("files", "get", "--repo", url, point, "/dd", "/normal.txt", "--to", str(target))
    assert got.returncode == 1
    assert "skipped /dd: exists in the target and is not a directory" in got.stderr
    assert "skipped /normal.txt: already exists in the target" in got.stderr
    assert os.listdir(outside) == []


def test_hostile_tree_through_the_view(hostile: tuple[str, str, Path]) -> None:
    """A mount shows no entry whose name cannot be a path component."""
    url, point, _ = hostile
    view = Service(url).open_view(point)
    try:
        names = view.listdir("/files")
        assert "normal.txt" in names and "new\nline.txt" in names
        assert not any("/" in n or "\0" in n or n in (".", "..") for n in names)
        assert view.readlink("/files/esc-link") == "../../../../../../etc/passwd"
    finally:
        view.close()
