"""The job-history catalog on a real SQLite file and a real PostgreSQL (one suite, both).

Migrations from every earlier revision, a newer catalog refused, every service job
recorded with its state changes, a process killed with SIGKILL mid-job shown as
interrupted, a catalog that is down costing a warning but never the backup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from lamina.backend.catalog import (
    INTERRUPTED,
    Catalog,
    CatalogError,
    CatalogTooNew,
    HistoryQuery,
    JobRecord,
    head_revision,
    revisions,
)
from lamina.backend.catalog.schema import metadata
from lamina.backend.catalog.store import MIGRATIONS
from lamina.backend.service import Service, init_repository
from tests.support.catalogs import read_only_sqlite_catalog
from tests.support.postgres import PostgresServer
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAMINA, *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=300
    )


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------- schema and migrations


def test_new_catalog_is_migrated_to_head_and_matches_the_schema(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    try:
        assert catalog.revision() == head_revision()
        inspector = sa.inspect(catalog.engine)
        for table in metadata.tables.values():
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
    finally:
        catalog.close()


@pytest.mark.parametrize("earlier", revisions()[:-1])
def test_catalog_at_each_earlier_revision_is_migrated_keeping_its_jobs(
    catalog_url: str, earlier: str
) -> None:
    engine = _engine(catalog_url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, earlier)
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, kind, state, created_at, volume, bytes_read) "
                "VALUES ('old1', 'backup', 'succeeded', 1000.0, 'local/ns/v', 42)"
            )
        )
    engine.dispose()
    catalog = Catalog.open(catalog_url)
    try:
        assert catalog.revision() == head_revision()
        (job,) = catalog.history()
        assert (job.id, job.kind, job.volume, job.bytes_read) == (
            "old1",
            "backup",
            "local/ns/v",
            42,
        )
        assert job.requests["put"] == 0 and job.cost_usd == 0.0  # columns added with defaults
    finally:
        catalog.close()


def test_catalog_from_a_newer_lamina_is_refused_in_one_line(catalog_url: str) -> None:
    Catalog.open(catalog_url).close()
    engine = _engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(CatalogTooNew, match="revision 9999, unknown to this lamina"):
        Catalog.open(catalog_url)
    result = lamina("history", "--catalog", catalog_url)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "newer lamina" in line and result.stdout == ""


# ---------------------------------------------------------------------- jobs of the service


def test_every_service_job_is_recorded_with_its_state_changes(
    catalog_url: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 4 * 1024 * 1024, seed=3)
    service = Service(repo, catalog=catalog_url, origin="api")
    try:
        backup = service.start_backup(str(image), "prod/db")
        backup.wait()
        point = backup.result
        verify = service.start_verify(point.id)
        verify.wait()
        bad = service.start_restore("ffffffffffff", str(tmp_path / "out.img"))
        bad.wait()
    finally:
        service.close()  # writes what is still queued
    catalog = Catalog.open(catalog_url)
    try:
        jobs = {j.id: j for j in catalog.history(HistoryQuery(with_events=True))}
    finally:
        catalog.close()
    assert set(jobs) == {backup.id, verify.id, bad.id}
    b = jobs[backup.id]
    assert (b.kind, b.state, b.volume, b.point) == (
        "backup",
        "succeeded",
        "local/prod/db",
        point.id,
    )
    assert b.bytes_read == point.stats["bytes_read"] > 0
    assert b.bytes_stored == point.stats["bytes_stored"] > 0
    assert b.requests["put"] > 0 and b.bytes_up > b.bytes_stored
    assert (b.origin, b.pid) == ("api", os.getpid())
    assert [e.state for e in b.events] == ["queued", "running", "succeeded"]
    assert b.started_at is not None and b.ended_at is not None and b.ended_at >= b.started_at
    assert jobs[verify.id].state == "succeeded" and jobs[verify.id].requests["get"] > 0
    failed = jobs[bad.id]
    assert failed.state == "failed" and failed.error == bad.error
    assert [e.state for e in failed.events][-1] == "failed"


def test_history_filters(catalog_url: str, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=4)
    service = Service(repo, catalog=catalog_url)
    try:
        for volume in ("a/one", "a/two"):
            service.start_backup(str(image), volume).wait()
        service.start_restore("ffffffffffff", str(tmp_path / "out.img")).wait()
    finally:
        service.close()
    base = ["history", "--catalog", catalog_url, "--json"]
    everything = json.loads(lamina(*base).stdout)
    assert [j["kind"] for j in everything] == ["restore", "backup", "backup"]  # newest first
    one = json.loads(lamina(*base, "--volume", "a/one").stdout)
    assert [j["volume"] for j in one] == ["local/a/one"]
    assert [j["state"] for j in json.loads(lamina(*base, "--failed").stdout)] == ["failed"]
    assert len(json.loads(lamina(*base, "--kind", "backup").stdout)) == 2
    assert json.loads(lamina(*base, "--since", "1h").stdout) == everything
    text = lamina("history", "--catalog", catalog_url)
    assert text.returncode == 0 and text.stdout.strip().endswith("3 jobs")
    assert "  error: " in text.stdout


# ---------------------------------------------------------------------- a process that died

_HANGING_BACKUP = textwrap.dedent(
    """
    import sys, threading
    from lamina.backend.service import Service
    repo, catalog, image = sys.argv[1:4]
    service = Service(repo, catalog=catalog)
    never = threading.Event()

    def ranges():  # the CBT answer that never comes: the backup runs until it is killed
        never.wait()
        return []

    job = service.start_backup(
        image, "ns/stuck", changed_ranges=ranges, allocated_ranges=ranges
    )
    job.wait()
    """
)


def test_a_job_whose_process_was_killed_shows_as_interrupted(
    catalog_url: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=5)
    process = subprocess.Popen(
        [sys.executable, "-c", _HANGING_BACKUP, repo, catalog_url, str(image)]
    )
    catalog = Catalog.open(catalog_url)
    try:

        def running() -> bool:
            jobs = catalog.history()
            return bool(jobs) and jobs[0].state == "running"

        _wait_for(running)
        process.send_signal(signal.SIGKILL)
        process.wait()
        (before,) = catalog.history()
        assert before.state == "running"  # nothing wrote its end
    finally:
        catalog.close()
    reopened = Catalog.open(catalog_url)  # the next open finds the process gone
    try:
        job = reopened.job(before.id)
    finally:
        reopened.close()
    assert job is not None and job.state == INTERRUPTED
    assert f"pid {process.pid}" in (job.error or "")
    assert job.events[-1].state == INTERRUPTED
    shown = lamina("history", "--catalog", catalog_url, "--failed")
    assert "interrupted" in shown.stdout


def test_a_live_job_of_another_host_stays_running_until_its_heartbeat_is_stale(
    catalog_url: str,
) -> None:
    from lamina.backend.catalog.store import STALE_AFTER

    now = time.time()
    catalog = Catalog.open(catalog_url)
    try:
        for job_id, beat in (("fresh", now), ("stale", now - STALE_AFTER - 1)):
            catalog.record_job(
                JobRecord(
                    id=job_id,
                    kind="backup",
                    state="running",
                    created_at=beat,
                    heartbeat_at=beat,
                    host="another-host",
                    pid=1,
                )
            )
        assert catalog.reap_interrupted(now) == ["stale"]
        assert catalog.job("fresh").state == "running"  # type: ignore[union-attr]
    finally:
        catalog.close()


# ---------------------------------------------------------------------- the catalog down


def test_unreachable_postgresql_and_a_wrong_password_are_one_line(
    postgres: PostgresServer,
) -> None:
    wrong = lamina("history", "--catalog", postgres.url(password="not-the-password"))
    assert wrong.returncode == 1
    (line,) = wrong.stderr.strip().splitlines()
    assert "password authentication failed" in line
    assert "not-the-password" not in line  # the URL is shown without its password
    closed = lamina("history", "--catalog", f"postgresql://lamina:x@127.0.0.1:{_closed_port()}/x")
    assert closed.returncode == 1
    (line,) = closed.stderr.strip().splitlines()
    assert "cannot open the job catalog" in line and "refused" in line.lower()


def test_a_read_only_sqlite_catalog_is_one_line(tmp_path: Path) -> None:
    with read_only_sqlite_catalog(tmp_path) as (_made, url):
        result = lamina("history", "--catalog", url)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "read-only" in line
    with pytest.raises(CatalogError, match="is not a file"):
        Catalog.open(f"sqlite:///{tmp_path}")


def test_a_backup_succeeds_when_the_catalog_is_down_and_is_reconciled_later(
    catalog_url: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=6)
    down = f"postgresql://lamina:x@127.0.0.1:{_closed_port()}/x"
    result = lamina(
        "backup",
        "--repo",
        repo,
        "--volume",
        "ns/v",
        str(image),
        "--json",
        env={**os.environ, "LAMINA_CATALOG": down},
    )
    assert result.returncode == 0, result.stderr
    point = json.loads(result.stdout)["id"]
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("lamina: warning: not recorded in the job history: ")
    # The next look at the history with the repository fills the job in.
    shown = lamina("history", "--catalog", catalog_url, "--repo", repo, "--json")
    assert shown.returncode == 0, shown.stderr
    (job,) = json.loads(shown.stdout)
    assert (job["point"], job["state"], job["kind"]) == (point, "succeeded", "backup")
    assert job["started_by"]["origin"] == "repository"
    again = json.loads(lamina("history", "--catalog", catalog_url, "--repo", repo, "--json").stdout)
    assert len(again) == 1  # reconciled once


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_history_escapes_what_other_hosts_wrote(catalog_url: str) -> None:
    hostile = "vol\x1b]0;owned\x07\u202e\r\nforged line"
    catalog = Catalog.open(catalog_url)
    try:
        catalog.record_job(
            JobRecord(
                id="hostile1",
                kind="backup",
                state="failed",
                created_at=time.time(),
                volume=hostile,
                error=f"failed: {hostile}",
                host=hostile,
            )
        )
    finally:
        catalog.close()
    result = lamina("history", "--catalog", catalog_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == "1 job"  # the job, its error, the count
    assert not any(ch in result.stdout for ch in "\x1b\x07\u202e\r")
    assert "\\x1b" in lines[0] and "forged line" in lines[0]


_BACKUP_WITHOUT_CLOSE = textwrap.dedent(
    """
    import sys
    from lamina.backend.service import Service
    repo, catalog, image = sys.argv[1:4]
    job = Service(repo, catalog=catalog).start_backup(image, "ns/quick")
    job.wait()
    print(job.id)
    # no service.close(): the process just ends
    """
)


def test_a_process_that_ends_without_closing_its_service_still_records_the_end(
    catalog_url: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=7)
    result = subprocess.run(
        [sys.executable, "-c", _BACKUP_WITHOUT_CLOSE, repo, catalog_url, str(image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    catalog = Catalog.open(catalog_url, reap=False)
    try:
        job = catalog.job(result.stdout.strip())
    finally:
        catalog.close()
    assert job is not None and job.state == "succeeded" and job.point


def test_a_catalog_turned_off_records_nothing_and_says_so(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=8)
    env = {**os.environ, "LAMINA_CATALOG": "none", "XDG_STATE_HOME": str(tmp_path / "state")}
    backup = lamina("backup", "--repo", repo, "--volume", "ns/v", str(image), env=env)
    assert backup.returncode == 0 and backup.stderr == ""
    assert not (tmp_path / "state").exists() and not (Path.cwd() / "none").exists()
    history = lamina("history", env=env)
    assert history.returncode == 1
    assert (
        history.stderr.strip()
        == "lamina: error: the job catalog is off (LAMINA_CATALOG or --catalog is 'none')"
    )


def test_jobs_through_the_grpc_api_are_recorded_once_by_the_server(
    catalog_url: str, tmp_path: Path
) -> None:
    from tests.support.api_server import TOKEN, running_server

    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=9)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    client_catalog = tmp_path / "client.sqlite"
    service = Service(repo, catalog=catalog_url, origin="api")
    try:
        with running_server(service, allowed_paths=[str(tmp_path)]) as server:
            result = lamina(
                "backup",
                "--server",
                server.address,
                "--token-file",
                str(token),
                "--volume",
                "ns/remote",
                str(image),
                "--json",
                env={**os.environ, "LAMINA_CATALOG": f"sqlite:///{client_catalog}"},
            )
            assert result.returncode == 0, result.stderr
    finally:
        service.close()
    point = json.loads(result.stdout)["id"]
    catalog = Catalog.open(catalog_url)
    try:
        (job,) = catalog.history()
    finally:
        catalog.close()
    assert (job.kind, job.state, job.point, job.origin) == ("backup", "succeeded", point, "api")
    assert job.pid == os.getpid()  # the server's process, not the CLI client's
    # The client ran no job itself: it recorded nothing.
    if client_catalog.exists():
        client = Catalog.open(f"sqlite:///{client_catalog}")
        try:
            assert client.history() == []
        finally:
            client.close()
