"""Mounts outlive the process that started them, and a later one finds them again.

A restarted front end (a new Service) lists the lamina mounts of its repository, whoever
started them, and can unmount them. The TUI asks before quitting with mounts active:
unmount all, leave them mounted, or stay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.pilot import Pilot

from lamina.backend.service import JobState, Service, init_repository
from lamina.tui.app import make_app
from lamina.tui.client import mounted_points
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.quit import QuitWithMountsScreen
from tests.support.volumes import make_volume

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


@dataclass(frozen=True)
class Repo:
    url: str
    point: str
    run_dir: Path


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repo]:
    # The mount records of this test only, in a runtime folder of its own (the mount
    # processes inherit it).
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    url = str(tmp_path / "repo")
    init_repository(url)
    service = Service(url)
    job = service.start_backup(str(make_volume(tmp_path / "vol.img", 4 * MiB)), "ns/v")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    yield Repo(url, job.result.id, run_dir)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        where = line.split()[4]
        if where.startswith(str(tmp_path)):  # a failed test must not leave a mount behind
            subprocess.run(["fusermount", "-u", "-z", where], check=False)


def records(repo: Repo) -> list[Path]:
    return sorted((repo.run_dir / "lamina" / "mounts").glob("*.json"))


def records_once_gone(repo: Repo, timeout: float = 30.0) -> list[Path]:
    """The records, once none is left or the timeout passed: a mount process drops its record
    as it exits, just after the unmount returns."""
    deadline = time.monotonic() + timeout
    while records(repo) and time.monotonic() < deadline:
        time.sleep(0.05)
    return records(repo)


def test_a_new_service_finds_a_mount_another_one_started(repo: Repo, tmp_path: Path) -> None:
    first = Service(repo.url)
    where = tmp_path / "suggested"  # does not exist yet: made for the mount
    info = first.mount(repo.point, str(where))
    first.close()
    del first  # the front end that mounted is gone

    again = Service(repo.url)
    (found,) = again.list_mounts()
    assert (found.mountpoint, found.point, found.pid) == (str(where), repo.point, info.pid)
    assert (
        Service(str(tmp_path / "repo") + "/").list_mounts() != []
    )  # one repository, two spellings
    other = str(tmp_path / "other")
    init_repository(other)
    assert Service(other).list_mounts() == []  # another repository's mounts are not ours

    again.unmount(str(where))
    assert again.list_mounts() == [] and Service(repo.url).list_mounts() == []
    assert not where.exists()  # the folder made for the mount went with it
    assert records_once_gone(repo) == []


def test_a_mount_from_the_cli_is_found_and_a_dead_one_is_not(repo: Repo, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = subprocess.run(
        [*LAMINA, "mount", "--repo", repo.url, "--point", repo.point[:8], str(mnt), "--daemon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split()[-1])
    service = Service(repo.url)
    (found,) = service.list_mounts()
    assert (found.mountpoint, found.point, found.pid) == (str(mnt), repo.point, pid)

    os.kill(pid, signal.SIGKILL)  # the mount stays in the table, with nobody serving it
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.list_mounts() == []
    assert records(repo) == []  # the dead process's record was dropped
    ended = subprocess.run([*LAMINA, "umount", str(mnt)], capture_output=True, text=True)
    assert ended.returncode == 0, ended.stderr


async def _wait(pilot: Pilot[None], condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", ["u", "l", "n"])
async def test_the_tui_asks_before_quitting_with_mounts(
    repo: Repo, tmp_path: Path, answer: str
) -> None:
    earlier = Service(repo.url)
    where = tmp_path / "mnt"
    earlier.mount(repo.point, str(where))  # mounted by an earlier run of the UI
    service = Service(repo.url)
    app = make_app(service)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await _wait(pilot, lambda: app.started, "the repository")
            assert mounted_points(service) == {repo.point: str(where)}
            await _wait(
                pilot,
                lambda: isinstance(app.screen, ClustersScreen) and app.screen.loaded,
                "the clusters",
            )
            await pilot.press("q")
            await _wait(pilot, lambda: isinstance(app.screen, QuitWithMountsScreen), "the question")
            assert app.screen.mounts == {repo.point: str(where)}  # type: ignore[attr-defined]
            await pilot.press(answer)
            if answer == "n":
                await _wait(pilot, lambda: isinstance(app.screen, ClustersScreen), "back")
                assert app.is_running and os.path.ismount(where)
                await pilot.press("q")
                await _wait(pilot, lambda: isinstance(app.screen, QuitWithMountsScreen), "again")
                await pilot.press("l")
            await _wait(pilot, lambda: not app.is_running, "the app to quit")
        if answer == "u":
            assert not os.path.ismount(where) and service.list_mounts() == []
        else:
            assert os.path.ismount(where)
            (left,) = Service(repo.url).list_mounts()
            assert left.point == repo.point
    finally:
        if os.path.ismount(where):
            service.unmount(str(where))
        service.close()
        earlier.close()
