"""Processes that read a point give back their shared lock on every way out.

A lock left behind expires only after minutes, and `lamina locks` lists it. After each of
these real processes ends (normally, with an error, on SIGINT or on SIGTERM), no lock of it
is left in the repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.service import JobState, Service, init_repository
from tests.support.ext4_trees import MiB, make_source_tree, mkfs_ext4
from tests.support.terminal import TerminalProcess

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


@dataclass(frozen=True)
class Repo:
    url: str
    point: str
    local_root: Path


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * 1024)
    root = tmp_path / "cluster"
    service = Service(url, local_root=str(root))
    image = mkfs_ext4(make_source_tree(tmp_path / "src"), tmp_path / "vol.img", 16 * MiB)
    service.add_local_volume("demo", "app-data", str(image))
    job = service.start_volume_backup("local", "demo", "app-data")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    yield Repo(url, job.result.id, root)


def locks_of(url: str) -> list[str]:
    """`lamina locks` as a user reads it: one line a lock."""
    result = subprocess.run(
        [*LAMINA, "locks", "--repo", url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line != "no locks"]


def lock_pids(url: str) -> set[int]:
    return {int(m) for line in locks_of(url) for m in re.findall(r"by pid (\d+)", line)}


def wait_for_lock_of(url: str, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    service = Service(url)
    try:
        while pid not in {lock.pid for lock in service.list_locks()}:
            assert time.monotonic() < deadline, f"pid {pid} never took a lock"
            time.sleep(0.05)
    finally:
        service.close()


def test_files_ls_gives_its_lock_back(repo: Repo) -> None:
    result = subprocess.run(
        [*LAMINA, "files", "ls", "--repo", repo.url, repo.point, "/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "data" in result.stdout.split()
    assert locks_of(repo.url) == []


def test_files_ls_gives_its_lock_back_after_an_error(repo: Repo) -> None:
    result = subprocess.run(
        [*LAMINA, "files", "ls", "--repo", repo.url, repo.point, "/no/such/folder"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and result.stderr.startswith("lamina: error: ")
    assert locks_of(repo.url) == []


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_serve_gives_back_the_locks_of_its_views(repo: Repo, tmp_path: Path, how: str) -> None:
    from lamina.backend.service.remote import ApiClient

    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [
            *LAMINA,
            *("serve", "--repo", repo.url, "--listen", "127.0.0.1:0", "--insecure-no-auth"),
            *("--log-file", str(log), "--grace", "0"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the server never said where it listens"
            found = re.search(r"listening on (\S+)", log.read_text() if log.exists() else "")
            address = found.group(1) if found else None
            time.sleep(0.05)
        with ApiClient(address) as client:
            assert "data" in [e.name for e in client.list_files(repo.point, "/")]
        wait_for_lock_of(repo.url, server.pid)
        server.send_signal(getattr(signal, how))
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.pid not in lock_pids(repo.url)
    assert locks_of(repo.url) == []


@pytest.mark.parametrize("how", ["q", "SIGTERM", "SIGINT"])
def test_the_tui_file_browser_gives_its_lock_back(repo: Repo, tmp_path: Path, how: str) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        "LAMINA_LOCAL_ROOT": str(repo.local_root),
    }
    with TerminalProcess([*LAMINA, "tui", "--repo", repo.url], env=env, cwd=str(tmp_path)) as tui:
        tui.wait_for("local")
        tui.send("\r")  # the local cluster's volumes
        tui.wait_for("app-data")
        tui.send("\r")  # the volume's chain
        tui.wait_for(repo.point)
        tui.send("f")  # the files of the point
        wait_for_lock_of(repo.url, tui.process.pid)
        if how == "q":
            tui.send("q")
        else:
            tui.signal(getattr(signal, how))
        tui.wait(60)
        assert tui.process.returncode in (0, 130, 143), tui.text()[-2000:]
    assert locks_of(repo.url) == []


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_foreground_mount_gives_its_lock_back(repo: Repo, tmp_path: Path, how: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = subprocess.Popen(
        [*LAMINA, "mount", "--repo", repo.url, "--point", repo.point, str(mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert mount.poll() is None, "the mount process ended early"
            assert time.monotonic() < deadline, "never mounted"
            time.sleep(0.05)
        with open(mnt / "disk.img", "rb") as image:  # reading opens the point: a shared lock
            assert len(image.read(4096)) == 4096
        wait_for_lock_of(repo.url, mount.pid)
        mount.send_signal(getattr(signal, how))
        assert mount.wait(60) == 0
    finally:
        if mount.poll() is None:
            mount.kill()
            mount.wait()
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], capture_output=True, check=False)
    assert not os.path.ismount(mnt)
    assert locks_of(repo.url) == []
