"""Schedules through the service contract: list, get, pause, resume, run-now and remove in
this process and over a real lamina.v1 server on loopback, `lamina schedule ... --server`,
and each volume's last good backup with the age its schedule allows; on SQLite and on
PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.catalog import Catalog, JobRecord
from lamina.backend.catalog.schedules import update_schedule
from lamina.backend.errors import UsageError
from lamina.backend.service import LaminaService, Schedules, Service, init_repository
from lamina.backend.service.remote import ApiClient, RemoteService
from lamina.backend.service.schedules import policy_from_options
from tests.support.api_server import TOKEN, running_server

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
HOSTILE = "disk\x1b]0;owned\x07\u202e\r\nforged line"
# Whole seconds: the API's timestamps carry them exactly, so schedules compare equal.
NOW = float(int(time.time()))
HOUR = 3600.0


@dataclass
class Lab:
    local: Service
    remote: RemoteService
    address: str
    catalog_url: str
    repo: str
    tmp: Path


def _seed(catalog_url: str, repo: str, tmp: Path) -> None:
    """An hourly backup of prod/db kept by count, a backup of prod/idle by cron (paused),
    and a weekly prune whose last run failed with a hostile error line."""
    image = tmp / "db.img"
    image.write_bytes(bytes(64 * 1024))
    schedules = Schedules(catalog_url)
    root = str(tmp / "cluster")
    schedules.add(
        "db-hourly",
        repository=repo,
        every="1h",
        volume="prod/db",
        source=str(image),
        local_root=root,
        policy=policy_from_options(last=3, within="2d"),
        now=NOW - 10,
    )
    idle = tmp / "idle.img"
    idle.write_bytes(bytes(64 * 1024))
    schedules.add(
        "idle-6h",
        repository=repo,
        cron="0 */6 * * *",
        volume="prod/idle",
        source=str(idle),
        local_root=root,
        now=NOW,
    )
    schedules.pause("idle-6h")
    schedules.add("weekly-prune", repository=repo, cron="0 3 * * 0", prune=True, now=NOW)
    catalog = Catalog.open(catalog_url)
    try:
        update_schedule(
            catalog,
            "weekly-prune",
            last_run=NOW - 60,
            last_state="failed",
            last_error=f"prune failed: {HOSTILE}",
            last_jobs="j1 j2",
        )
    finally:
        catalog.close()


@pytest.fixture
def lab(catalog_url: str, tmp_path: Path) -> Iterator[Lab]:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    _seed(catalog_url, repo, tmp_path)
    service = Service(repo, catalog=catalog_url, origin="api")
    try:
        with running_server(service) as server:
            remote = RemoteService(ApiClient(server.address, token=TOKEN))
            try:
                yield Lab(service, remote, server.address, catalog_url, repo, tmp_path)
            finally:
                remote.close()
    finally:
        service.close()


def _both(lab: Lab) -> tuple[LaminaService, LaminaService]:
    return lab.local, lab.remote


def test_schedules_are_the_same_in_process_and_through_the_api(lab: Lab) -> None:
    local = [s.as_json() for s in lab.local.list_schedules()]
    remote = [s.as_json() for s in lab.remote.list_schedules()]
    assert remote == local
    assert [s["name"] for s in remote] == ["db-hourly", "idle-6h", "weekly-prune"]
    db, idle, prune = lab.remote.list_schedules()
    assert (db.kind, db.volume, db.when, db.state) == ("backup", "prod/db", "every 1h", "active")
    assert db.retention == {"last": 3, "within_seconds": 2 * 86400.0}
    assert db.next_run == NOW - 10 + HOUR and db.last_run is None and db.last_state is None
    assert (idle.when, idle.state) == ("cron 0 */6 * * *", "paused")
    assert prune.kind == "prune" and prune.volume is None and prune.source is None
    # A hostile error line travels as it is; front ends escape it when they show it.
    assert prune.last_error == f"prune failed: {HOSTILE}" and prune.last_jobs == ["j1", "j2"]
    assert prune.last_run == NOW - 60 and prune.last_state == "failed"
    assert lab.remote.get_schedule("db-hourly") == lab.local.get_schedule("db-hourly")


def test_pause_resume_run_now_and_remove_through_the_api_land_in_the_catalog(lab: Lab) -> None:
    stored = Schedules(lab.catalog_url)
    paused = lab.remote.pause_schedule("db-hourly")
    assert paused.paused and stored.get("db-hourly").paused

    resumed = lab.remote.resume_schedule("db-hourly")
    assert not resumed.paused and not stored.get("db-hourly").paused
    assert resumed.next_run > time.time() - 1  # from its next slot after now

    before = time.time()
    due = lab.remote.run_schedule_now("idle-6h")
    assert due.run_now_pending and due.paused  # due now, and it stays paused
    assert before - 1 <= due.next_run <= time.time() + 1
    assert stored.get("idle-6h").run_now_pending

    lab.remote.remove_schedule("weekly-prune")
    assert [s.name for s in lab.local.list_schedules()] == ["db-hourly", "idle-6h"]


def test_unknown_and_empty_schedule_names_are_one_line_errors(lab: Lab) -> None:
    for service in _both(lab):
        for call in (
            service.get_schedule,
            service.pause_schedule,
            service.resume_schedule,
            service.run_schedule_now,
            service.remove_schedule,
        ):
            with pytest.raises(UsageError, match=r"^no schedule 'nosuch'$"):
                call("nosuch")
    with pytest.raises(UsageError, match="schedule name"):
        lab.remote.pause_schedule("")


def _record_backup(
    catalog: Catalog, job_id: str, volume: str, ended: float, **fields: object
) -> None:
    values: dict[str, object] = {
        "id": job_id,
        "kind": "backup",
        "state": "succeeded",
        "volume": volume,
        "created_at": ended - 30,
        "started_at": ended - 29,
        "ended_at": ended,
        **fields,
    }
    catalog.record_job(JobRecord(**values))  # type: ignore[arg-type]


def test_last_good_backups_come_from_one_query_with_the_schedules_allowance(lab: Lab) -> None:
    catalog = Catalog.open(lab.catalog_url)
    try:
        for job_id, volume, ended, extra in (
            ("a1", "local/prod/db", NOW - 5 * HOUR, {}),
            ("a2", "local/prod/db", NOW - HOUR, {"repository": lab.repo}),
            # Newer, but it failed, was not a backup, or went to another repository.
            ("a3", "local/prod/db", NOW - 60, {"state": "failed", "repository": lab.repo}),
            ("a4", "local/prod/db", NOW - 50, {"kind": "verify", "repository": lab.repo}),
            ("a5", "local/prod/db", NOW - 40, {"repository": "/elsewhere"}),
            ("b1", "local/prod/idle", NOW - 30 * HOUR, {"repository": lab.repo}),
            ("c1", "prod-eu/web/data", NOW - 2 * HOUR, {"repository": lab.repo}),
            # The same repository spelled as a file:// URL counts.
            ("d1", "local/prod/url", NOW - 3 * HOUR, {"repository": f"file://{lab.repo}"}),
        ):
            _record_backup(catalog, job_id, volume, ended, **extra)
        # a1 has no repository: it counts for none.
    finally:
        catalog.close()
    # Two hourly schedules of volumes never backed up: one made three hours ago (late),
    # one just now (its first backup is not due yet).
    schedules = Schedules(lab.catalog_url)
    for name, made in (("cache", NOW - 3 * HOUR), ("fresh", NOW - 10)):
        image = lab.tmp / f"{name}.img"
        image.write_bytes(bytes(4096))
        schedules.add(
            f"{name}-hourly",
            repository=lab.repo,
            every="1h",
            volume=f"prod/{name}",
            source=str(image),
            local_root=str(lab.tmp / "cluster"),
            now=made,
        )
    asked = ["local/prod/db", "local/prod/idle", "prod-eu/web/data", "local/prod/new"]
    for service in _both(lab):
        db, idle, web, new = service.last_good_backups(asked)
        assert [b.volume for b in (db, idle, web, new)] == asked
        # The hourly schedule allows two hours; the newest good backup is one hour old.
        assert (db.ended_at, db.allowed_age, db.schedule) == (NOW - HOUR, 2 * HOUR, "db-hourly")
        assert not db.overdue(NOW) and db.overdue(NOW + 1.5 * HOUR)
        # idle-6h is paused: its volume falls back to 24 hours, and 30 hours is too old.
        assert (idle.ended_at, idle.allowed_age, idle.schedule) == (NOW - 30 * HOUR, 86400, None)
        assert idle.overdue(NOW)
        assert (web.ended_at, web.schedule) == (NOW - 2 * HOUR, None) and not web.overdue(NOW)
        # Never backed up and not scheduled: nothing to be late for.
        assert new.ended_at is None and not new.overdue(NOW)
        assert service.last_good_backups([]) == []
        (url,) = service.last_good_backups(["local/prod/url"])
        assert url.ended_at == NOW - 3 * HOUR
        cache, fresh = service.last_good_backups(["local/prod/cache", "local/prod/fresh"])
        assert cache.ended_at is None and cache.scheduled_since == NOW - 3 * HOUR
        assert cache.overdue(NOW)
        assert fresh.ended_at is None and fresh.schedule == "fresh-hourly"
        assert not fresh.overdue(NOW) and fresh.overdue(NOW + 2 * HOUR)

    lab.local.resume_schedule("idle-6h")
    (idle,) = lab.remote.last_good_backups(["local/prod/idle"])
    # Every six hours by cron: twice the time between two slots is twelve hours.
    assert (idle.allowed_age, idle.schedule) == (12 * HOUR, "idle-6h") and idle.overdue(NOW)


def _lamina(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    token = lab.tmp / "token"
    token.write_text(TOKEN)
    return subprocess.run(
        [*LAMINA, "schedule", *args, "--server", lab.address, "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# The commands are the same over either catalog: one run, on SQLite, keeps the suite short.
@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_lamina_schedule_ls_and_pause_through_a_server(lab: Lab) -> None:
    paused = _lamina(lab, "pause", "db-hourly")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "paused schedule db-hourly"
    assert Schedules(lab.catalog_url).get("db-hourly").paused

    listed = _lamina(lab, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("db-hourly", "paused"),
        ("idle-6h", "paused"),
        ("weekly-prune", "active"),
    ]
    assert rows[2]["last_error"] == f"prune failed: {HOSTILE}"  # JSON keeps it, escaped
    text = _lamina(lab, "ls")
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout and "\\x1b]0;owned" in text.stdout  # escaped

    missing = _lamina(lab, "run-now", "nosuch")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == ["lamina: error: no schedule 'nosuch'"]
    both = _lamina(lab, "ls", "--catalog", f"sqlite:///{lab.tmp}/other.sqlite")
    assert both.returncode != 0 and "a server uses its own catalog" in both.stderr
