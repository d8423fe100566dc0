"""The job history through the service contract: ``list_history`` and ``get_job`` in this
process and over a real lamina.v1 server on loopback (``ListHistory``, ``GetJob``), with
paging, filters, and ``lamina history --server``; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.catalog import Catalog, JobNotFound, JobRecord
from lamina.backend.errors import UsageError
from lamina.backend.service import LaminaService, Service, init_repository
from lamina.backend.service.remote import ApiClient, RemoteService
from tests.support.api_server import TOKEN, running_server

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
HOSTILE = "vol\x1b]0;owned\x07\u202e\r\nforged line"
# Whole seconds: the API's timestamps carry them exactly, so records compare equal.
NOW = float(int(time.time()))


def _records() -> list[JobRecord]:
    """Eight jobs, two of them at the same instant (the page order breaks the tie by id)."""
    specs = [
        ("j1", "backup", "succeeded", "local/a/one", NOW - 700, None),
        ("j2", "backup", "failed", "local/a/two", NOW - 600, "backup failed: disk gone"),
        ("j3", "restore", "succeeded", "local/a/one", NOW - 500, None),
        ("j4", "verify", "interrupted", None, NOW - 400, "interrupted: its process ended"),
        ("j5a", "backup", "succeeded", "local/a/one", NOW - 300, None),
        ("j5b", "prune", "succeeded", None, NOW - 300, None),
        ("j6", "backup", "failed", HOSTILE, NOW - 200, f"failed: {HOSTILE}"),
        ("j7", "backup", "succeeded", "local/a/two", NOW - 100, None),
    ]
    records = []
    for i, (job_id, kind, state, volume, created, error) in enumerate(specs):
        record = JobRecord(
            id=job_id,
            kind=kind,
            state=state,
            description=f"{kind} {i}",
            volume=volume,
            point=f"{i:02d}" * 16 if kind == "backup" and state == "succeeded" else None,
            created_at=created,
            started_at=created + 1,
            ended_at=created + 31,
            bytes_read=1000 * i,
            bytes_stored=100 * i,
            error=error,
            origin="api" if i % 2 else "cli",
            host=HOSTILE if job_id == "j6" else "backup-host",
            pid=4000 + i,
            retries=i,
            cost_usd=0.25 * i,
        )
        record.requests["put"] = 10 * i
        record.requests["get"] = i
        records.append(record)
    return records


def _seed(catalog_url: str, records: list[JobRecord]) -> None:
    catalog = Catalog.open(catalog_url)
    try:
        for record in records:
            # Three state changes each, as the service records them.
            for state, offset in (("queued", 0), ("running", 1), (record.state, 31)):
                catalog.record_job(
                    JobRecord(**{**record.__dict__, "state": state, "events": []}),
                    message=f"now {state}",
                    at=record.created_at + offset,
                )
    finally:
        catalog.close()


@dataclass
class Lab:
    local: Service
    remote: RemoteService
    address: str
    catalog_url: str


@pytest.fixture
def lab(catalog_url: str, tmp_path: Path) -> Iterator[Lab]:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    _seed(catalog_url, _records())
    service = Service(repo, catalog=catalog_url, origin="api")
    try:
        with running_server(service) as server:
            remote = RemoteService(ApiClient(server.address, token=TOKEN))
            try:
                yield Lab(service, remote, server.address, catalog_url)
            finally:
                remote.close()
    finally:
        service.close()


def _all_pages(service: LaminaService, size: int, **filters: object) -> list[list[JobRecord]]:
    pages = []
    token = ""
    while True:
        page = service.list_history(limit=size, page_token=token, **filters)  # type: ignore[arg-type]
        pages.append(page.jobs)
        token = page.next_page_token
        if not token:
            return pages


def _ids(pages: list[list[JobRecord]]) -> list[str]:
    return [r.id for page in pages for r in page]


NEWEST_FIRST = ["j7", "j6", "j5a", "j5b", "j4", "j3", "j2", "j1"]


def test_history_pages_are_the_same_in_process_and_through_the_api(lab: Lab) -> None:
    for service in (lab.local, lab.remote):
        pages = _all_pages(service, 3)
        assert [len(p) for p in pages] == [3, 3, 2]
        assert _ids(pages) == NEWEST_FIRST
    local = [r.as_json() for p in _all_pages(lab.local, 3) for r in p]
    remote = [r.as_json() for p in _all_pages(lab.remote, 3) for r in p]
    assert remote == local
    j6 = next(r for r in local if r["id"] == "j6")
    assert j6["volume"] == HOSTILE and j6["error"] == f"failed: {HOSTILE}"  # kept as they are
    assert j6["requests"]["put"] == 60 and j6["cost_usd"] == 1.5
    assert j6["started_by"] == {"origin": "cli", "host": HOSTILE, "pid": 4006}
    # One page holds everything when it is big enough: no token then.
    whole = lab.remote.list_history(limit=8)
    assert [r.id for r in whole.jobs] == NEWEST_FIRST and whole.next_page_token == ""


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"volume": "local/a/one"}, ["j5a", "j3", "j1"]),
        ({"kind": "backup"}, ["j7", "j6", "j5a", "j2", "j1"]),
        ({"failed": True}, ["j6", "j4", "j2"]),
        ({"since": NOW - 350}, ["j7", "j6", "j5a", "j5b"]),
        ({"kind": "backup", "failed": True, "since": NOW - 650}, ["j6", "j2"]),
    ],
)
def test_history_filters_page_alike_in_process_and_through_the_api(
    lab: Lab, filters: dict[str, object], expected: list[str]
) -> None:
    for service in (lab.local, lab.remote):
        assert _ids(_all_pages(service, 2, **filters)) == expected


def test_a_job_added_between_pages_shifts_no_page(lab: Lab) -> None:
    first = lab.remote.list_history(limit=3)
    newer = JobRecord(id="j8", kind="backup", state="running", created_at=NOW)
    _seed(lab.catalog_url, [newer])
    rest = _all_pages_from(lab.remote, 3, first.next_page_token)
    assert [r.id for r in first.jobs] + rest == NEWEST_FIRST


def _all_pages_from(service: LaminaService, size: int, token: str) -> list[str]:
    ids = []
    while token:
        page = service.list_history(limit=size, page_token=token)
        ids += [r.id for r in page.jobs]
        token = page.next_page_token
    return ids


def test_get_job_has_its_state_changes_in_process_and_through_the_api(lab: Lab) -> None:
    local = lab.local.get_job("j2")
    remote = lab.remote.get_job("j2")
    assert remote.as_json() == local.as_json()
    assert [(e.state, e.message) for e in remote.events] == [
        ("queued", "now queued"),
        ("running", "now running"),
        ("failed", "now failed"),
    ]
    assert remote.error == "backup failed: disk gone" and remote.requests["get"] == 1
    for service in (lab.local, lab.remote):
        with pytest.raises(JobNotFound, match="no job nosuch in the job history"):
            service.get_job("nosuch")


def test_bad_history_requests_are_one_line_errors(lab: Lab) -> None:
    for service in (lab.local, lab.remote):
        with pytest.raises(UsageError, match="not a page token"):
            service.list_history(page_token="garbage!")
        with pytest.raises(UsageError, match="no job kind"):
            service.list_history(kind="explode")
        with pytest.raises(UsageError, match="at least 1"):
            service.list_history(limit=0)


def _cli(lab: Lab, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return subprocess.run(
        [*LAMINA, "history", "--server", lab.address, "--token-file", str(token), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LAMINA_CATALOG": "off"},  # the client's own catalog is not read
        timeout=120,
    )


def test_cli_history_through_a_server_escapes_hostile_names(lab: Lab, tmp_path: Path) -> None:
    result = _cli(lab, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "8 jobs"
    assert not any(ch in result.stdout for ch in "\x1b\x07\u202e\r")
    (hostile,) = [line for line in lines if "j6" in line]
    assert "\\x1b" in hostile and "forged line" in hostile
    assert sum("  error: " in line for line in lines) == 3
    failed = _cli(lab, tmp_path, "--failed", "--kind", "backup", "--json")
    assert failed.returncode == 0, failed.stderr
    jobs = json.loads(failed.stdout)
    assert [j["id"] for j in jobs] == ["j6", "j2"]
    assert [e["state"] for e in jobs[1]["events"]] == ["queued", "running", "failed"]


def test_cli_history_through_a_server_reads_every_page(lab: Lab, tmp_path: Path) -> None:
    # More jobs than the server's default page: the CLI asks for the next pages itself.
    many = [
        JobRecord(id=f"m{i:03d}", kind="verify", state="succeeded", created_at=NOW - 1000 - i)
        for i in range(150)
    ]
    _seed(lab.catalog_url, many)
    result = _cli(lab, tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    ids = [j["id"] for j in json.loads(result.stdout)]
    assert ids == NEWEST_FIRST + [r.id for r in many]
    limited = _cli(lab, tmp_path, "--limit", "120", "--kind", "verify", "--json")
    assert [j["id"] for j in json.loads(limited.stdout)] == ["j4", *[r.id for r in many][:119]]
