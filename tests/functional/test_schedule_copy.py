"""Copy as a schedule step: `lamina schedule add --copy-to`, run by a real controller process.

Over SQLite (the catalog's schedule rows and claims are the same code on PostgreSQL, which
tests/functional/test_schedules.py runs); the controller is a real `lamina controller
--local`, stopped with SIGTERM, and the test waits on catalog rows, never on the clock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lamina.backend.catalog import Catalog, HistoryQuery, JobRecord
from lamina.backend.service import JobState, Schedules, Service, init_repository
from tests.support.volumes import make_volume, sha256_file

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
PASSWORD = b"correct horse"


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def controller(catalog_url: str, log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*LAMINA, "controller", "--local", "--catalog", catalog_url, "--poll", "0.2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()


def jobs(catalog_url: str, kind: str) -> list[JobRecord]:
    catalog = Catalog.open(catalog_url)
    try:
        return [j for j in catalog.history(HistoryQuery(kind=kind)) if j.origin == "controller"]
    finally:
        catalog.close()


def test_a_backup_schedule_copies_each_new_point_to_another_repository(tmp_path: Path) -> None:
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    repo, offsite = str(tmp_path / "repo"), str(tmp_path / "offsite")
    init_repository(repo, grid_size=256 * 1024, password=PASSWORD)
    init_repository(offsite, grid_size=256 * 1024)
    password_file = tmp_path / "password"
    password_file.write_bytes(PASSWORD)
    volume = make_volume(tmp_path / "db.img", 4 * MiB, seed=3)
    added = lamina(
        "schedule", "add", "db", "--repo", repo, "--password-file", str(password_file),
        "--local-root", str(tmp_path / "cluster"), "--volume", "db", "--source", str(volume),
        "--every", "1s", "--keep-last", "2", "--copy-to", offsite, "--catalog", catalog_url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"and copy to {offsite}" in added.stdout

    with controller(catalog_url, tmp_path / "controller.log"):
        wait_for(
            lambda: sum(j.state == JobState.SUCCEEDED for j in jobs(catalog_url, "copy")) >= 2,
            "two scheduled copies",
        )
    copies = [j for j in jobs(catalog_url, "copy") if j.state == JobState.SUCCEEDED]
    assert all(offsite in j.description for j in copies)
    made = {j.point for j in jobs(catalog_url, "backup") if j.state == JobState.SUCCEEDED}
    there = Service(offsite).list_points()
    # The offsite copy keeps what the schedule's forget removed here: every copied point.
    assert len(there) >= 2 and {p.id for p in there} <= made
    assert len(Service(repo, password=PASSWORD).list_points()) <= 3  # keep-last 2, one running
    newest = max(there, key=lambda p: p.created)
    restored = tmp_path / "restored.img"
    job = Service(offsite).start_restore(newest.id, str(restored))
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    assert sha256_file(restored) == sha256_file(volume)

    listed = lamina("schedule", "ls", "--json", "--catalog", catalog_url)
    [schedule] = json.loads(listed.stdout)
    assert schedule["copy_to"] == offsite and schedule["last_state"] in ("succeeded", "cancelled")


def test_a_copy_step_that_cannot_work_is_refused_in_one_line(tmp_path: Path) -> None:
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    repo = str(tmp_path / "repo")
    init_repository(repo)
    volume = make_volume(tmp_path / "db.img", 1 * MiB, seed=4)
    backup = ["--volume", "db", "--source", str(volume), "--local-root", str(tmp_path / "c")]
    for extra, said in (
        ([*backup, "--copy-to", repo], "the schedule's own repository"),
        ([*backup, "--copy-to", str(tmp_path / "nowhere")], "no lamina repository"),
        (["--prune", "--copy-to", str(tmp_path / "x")], "copies follow backups"),
        ([*backup, "--copy-password-file", str(tmp_path / "pw")], "goes with --copy-to"),
    ):
        result = lamina(
            "schedule", "add", "s", "--repo", repo, "--every", "1h", "--catalog", catalog, *extra
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("lamina: error: ") and said in lines[0], lines[0]
    assert Schedules(catalog).list() == []
