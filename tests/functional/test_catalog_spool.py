"""Jobs recorded into an SQLite catalog through its spool (backend/catalog/spool.py).

Real `lamina` processes and real SQLite files: a CLI job loads no database layer and still
shows in the history at once; concurrent writers and readers record every job exactly once;
a late, older version of a job never undoes its end; what this lamina cannot read is left
for one that can; a read-only catalog is written directly, with its warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lamina.backend.catalog import INTERRUPTED, Catalog, JobRecord
from lamina.backend.catalog.process import current_process
from lamina.backend.catalog.records import JobEvent
from lamina.backend.catalog.spool import Spool, spool_folder
from lamina.backend.service import init_repository
from tests.support.catalogs import read_only_sqlite_catalog
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(
    *args: str, env: dict[str, str], python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python, *LAMINA[1:], *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Path:
    return tmp_path / "state" / "catalog.sqlite"


def _env(catalog: Path) -> dict[str, str]:
    return {**os.environ, "LAMINA_CATALOG": f"sqlite:///{catalog}"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _record(job_id: str, state: str, **fields: object) -> JobRecord:
    me = current_process()
    values: dict[str, object] = {
        "kind": "backup",
        "repository": "/r",
        "volume": "local/ns/v",
        "created_at": 1000.0,
        "started_at": 1001.0,
        "heartbeat_at": time.time(),
        "host": me.host,
        "pid": me.pid,
        "boot_id": me.boot_id,
        "process_start": me.start,
    }
    values.update(fields)
    if state not in ("queued", "running"):
        values.setdefault("ended_at", 1002.0)
    return JobRecord(id=job_id, state=state, **values)  # type: ignore[arg-type]


def test_a_cli_backup_loads_no_database_layer_and_shows_in_the_history_at_once(
    sqlite_catalog: Path, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 2 * 1024 * 1024, seed=11)
    env = _env(sqlite_catalog)
    backup = lamina(
        "backup", "--repo", repo, "--volume", "ns/v", str(image), "--json",
        env=env, python=("-X", "importtime"),
    )  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    loaded = {line.split("|")[-1].strip() for line in backup.stderr.splitlines() if "|" in line}
    assert "lamina.backend.engine.pipelines" in loaded  # the probe sees the job's own modules
    assert not {"sqlalchemy", "alembic", "lamina.backend.catalog.store"} & loaded
    made = json.loads(backup.stdout)
    point = made["id"]
    waiting = list(spool_folder(sqlite_catalog).iterdir())
    assert [p.suffix for p in waiting] == [".json"]

    shown = lamina("history", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    (job,) = json.loads(shown.stdout)
    assert (job["kind"], job["state"], job["point"]) == ("backup", "succeeded", point)
    assert job["requests"]["put"] > 0 and job["bytes_read"] == made["stats"]["bytes_read"] > 0
    assert [e["state"] for e in job["events"]] == ["queued", "running", "succeeded"]
    assert list(spool_folder(sqlite_catalog).iterdir()) == []  # moved in, once
    again = json.loads(lamina("history", "--json", env=env).stdout)
    assert [j["id"] for j in again] == [job["id"]]


def test_concurrent_jobs_and_readers_record_every_job_once_with_its_events(
    sqlite_catalog: Path, tmp_path: Path
) -> None:
    env = _env(sqlite_catalog)
    repos = []
    for i in range(4):
        repo = str(tmp_path / f"repo{i}")
        init_repository(repo)
        repos.append((repo, make_volume(tmp_path / f"disk{i}.img", 1024 * 1024, seed=20 + i)))

    def back_up(i: int) -> str:
        repo, image = repos[i % len(repos)]
        result = lamina("backup", "--repo", repo, "--volume", f"ns/v{i}", str(image), env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def read(_: int) -> int:
        result = lamina("history", "--json", env=env)
        assert result.returncode == 0, result.stderr
        return len(json.loads(result.stdout))

    with ThreadPoolExecutor(8) as pool:
        backups = [pool.submit(back_up, i) for i in range(8)]
        readers = [pool.submit(read, i) for i in range(8)]
        for f in backups + readers:
            f.result()
    jobs = json.loads(lamina("history", "--json", env=env).stdout)
    assert sorted(j["volume"] for j in jobs) == sorted(f"local/ns/v{i}" for i in range(8))
    for j in jobs:
        assert j["state"] == "succeeded", j
        assert [e["state"] for e in j["events"]] == ["queued", "running", "succeeded"], j
    assert list(spool_folder(sqlite_catalog).iterdir()) == []


def test_a_late_live_version_never_undoes_an_end_and_leaves_once_nothing_can_write_it(
    sqlite_catalog: Path,
) -> None:
    Catalog.open(f"sqlite:///{sqlite_catalog}").close()
    spool = Spool(spool_folder(sqlite_catalog))
    running = _record("job1", "running")
    ended = _record("job1", "succeeded", bytes_read=7)
    events = [JobEvent(1001.0, "running", "running")]
    spool.write(ended, [*events, JobEvent(1002.0, "succeeded", "succeeded")])
    catalog = Catalog.open(f"sqlite:///{sqlite_catalog}")
    try:
        assert list(spool.folder.iterdir()) == []
        # An older version read late (here: written again) by a process that still runs.
        spool.write(running, events)
        catalog.ingest_pending()
        job = catalog.job("job1")
        assert job is not None and (job.state, job.bytes_read) == ("succeeded", 7)
        assert [e.state for e in job.events] == ["running", "succeeded"]
        assert len(list(spool.folder.iterdir())) == 1  # its process might write it again
        gone = _record("job1", "running", pid=_dead_pid())
        spool.write(gone, events)
        catalog.ingest_pending()
        assert list(spool.folder.iterdir()) == []
        job = catalog.job("job1")
        assert job is not None and job.state == "succeeded"
    finally:
        catalog.close()


def test_a_job_of_a_killed_process_is_interrupted_and_a_real_end_replaces_the_guess(
    sqlite_catalog: Path,
) -> None:
    url = f"sqlite:///{sqlite_catalog}"
    Catalog.open(url).close()
    spool = Spool(spool_folder(sqlite_catalog))
    other_host = {"host": "elsewhere", "pid": 1, "heartbeat_at": time.time() - 3600}
    spool.write(_record("killed", "running", pid=_dead_pid()), [JobEvent(1001.0, "running")])
    spool.write(_record("silent", "running", **other_host), [JobEvent(1001.0, "running")])
    catalog = Catalog.open(url)  # moves both in, then reaps them
    try:
        for job_id in ("killed", "silent"):
            job = catalog.job(job_id)
            assert job is not None and job.state == INTERRUPTED, job_id
        assert list(spool.folder.iterdir()) == []  # nothing can write either of them again
        # The other host was only slow: its end comes after all.
        spool.write(
            _record("silent", "succeeded", **other_host),
            [JobEvent(1001.0, "running"), JobEvent(time.time() + 1, "succeeded", "succeeded")],
        )
        job = catalog.job("silent")
        assert job is not None and job.state == "succeeded"
        assert [e.state for e in job.events] == ["running", INTERRUPTED, "succeeded"]
    finally:
        catalog.close()


def test_what_this_lamina_cannot_read_is_left_for_one_that_can(sqlite_catalog: Path) -> None:
    folder = spool_folder(sqlite_catalog)
    folder.mkdir(parents=True)
    newer = folder / "job9.json"
    newer.write_text(json.dumps({"format": 2, "record": {"id": "job9"}, "events": []}))
    damaged = folder / "job8.json"
    damaged.write_text('{"format": 1, "rec')
    catalog = Catalog.open(f"sqlite:///{sqlite_catalog}")
    try:
        assert catalog.history() == []
    finally:
        catalog.close()
    assert sorted(p.name for p in folder.iterdir()) == ["job8.json", "job9.json"]


def test_a_read_only_sqlite_catalog_gets_no_spool_and_the_backup_warns(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=12)
    with read_only_sqlite_catalog(tmp_path) as (made, url):
        assert Spool.for_catalog(url) is None
        result = lamina(
            "backup", "--repo", repo, "--volume", "ns/v", str(image),
            env={**os.environ, "LAMINA_CATALOG": url},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("lamina: warning: not recorded in the job history: ")
    assert "read-only" in warning
    assert sorted(p.name for p in made.iterdir()) == ["catalog.sqlite", "catalog.sqlite.lock"]
