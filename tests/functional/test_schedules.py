"""Schedules and `lamina controller --local`, as real processes over a real catalog.

Each test runs once on SQLite and once on PostgreSQL (the ``catalog_url`` fixture). The
controllers are real `lamina controller --local` processes, stopped with SIGTERM; the tests
wait on catalog rows and repository points, never on the clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lamina.backend.catalog import Catalog, HistoryQuery, JobRecord
from lamina.backend.catalog.schedules import claim_slot, get_schedule
from lamina.backend.service import Schedules, Service, init_repository, policy_from_options
from tests.support.volumes import make_volume, sha256_file

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
PASSWORD = b"correct horse"


def lamina(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def wait_for(condition: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def controller(catalog_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A running `lamina controller --local`; SIGTERM on the way out, which must end it cleanly."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*LAMINA, "controller", "--local", "--catalog", catalog_url, "--poll", "0.2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert "controller stopped" in log.read_text()


def jobs(catalog_url: str, kind: str, state: str | None = None) -> list[JobRecord]:
    catalog = Catalog.open(catalog_url)
    try:
        found = catalog.history(HistoryQuery(kind=kind))
    finally:
        catalog.close()
    return [j for j in found if j.origin == "controller" and (state is None or j.state == state)]


def schedule_row(catalog_url: str, name: str) -> dict[str, object]:
    catalog = Catalog.open(catalog_url)
    try:
        return get_schedule(catalog, name).values()
    finally:
        catalog.close()


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    repo = str(tmp_path / "repo")
    init_repository(repo, grid_size=256 * 1024, password=PASSWORD)
    password_file = tmp_path / "password"
    password_file.write_bytes(PASSWORD)
    return {
        "repo": repo,
        "password_file": str(password_file),
        "root": str(tmp_path / "cluster"),
    }


def add(catalog_url: str, setup: dict[str, str], name: str, *extra: str) -> None:
    lamina(
        "schedule",
        "add",
        name,
        "--repo",
        setup["repo"],
        "--password-file",
        setup["password_file"],
        "--local-root",
        setup["root"],
        "--catalog",
        catalog_url,
        *extra,
    )


def test_a_one_second_schedule_fires_forgets_and_its_points_restore_byte_identically(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "db.img", 4 * MiB, seed=3)
    # Two more schedules of the same volume: a daily cron one (paused) and one removed again.
    add(
        catalog_url,
        setup,
        "db",
        "--volume",
        "prod/db",
        "--source",
        str(volume),
        "--cron",
        "0 3 * * *",
    )
    lamina("schedule", "pause", "db", "--catalog", catalog_url)
    add(
        catalog_url,
        setup,
        "db-kept",
        "--volume",
        "prod/db",
        "--source",
        str(volume),
        "--every",
        "1h",
    )
    lamina("schedule", "rm", "db-kept", "--catalog", catalog_url)
    lamina(
        "schedule",
        "add",
        "nightly",
        "--repo",
        setup["repo"],
        "--password-file",
        setup["password_file"],
        "--local-root",
        setup["root"],
        "--volume",
        "prod/db",
        "--source",
        str(volume),
        "--every",
        "1s",
        "--keep-last",
        "2",
        "--catalog",
        catalog_url,
    )
    with controller(catalog_url, tmp_path / "controller.log"):
        wait_for(
            lambda: len(jobs(catalog_url, "backup", "succeeded")) >= 4,
            "four scheduled backups",
        )
    backups = sorted(jobs(catalog_url, "backup", "succeeded"), key=lambda j: j.created_at)
    assert all(j.volume == "local/prod/db" for j in backups)
    assert jobs(catalog_url, "forget", "succeeded"), "retention ran as forget jobs"
    service = Service(setup["repo"], password=PASSWORD, catalog="none")
    try:
        present = [p.id for p in service.list_points()]
        # keep-last 2: the first point went with the forget after the third backup.
        assert backups[0].point not in present
        assert 2 <= len(present) <= 3  # 3 when the stop came between a backup and its forget
        newest = present[-1]
    finally:
        service.close()
    env = {**os.environ, "LAMINA_PASSWORD_FILE": setup["password_file"]}
    target = tmp_path / "restored.img"
    subprocess.run(
        [*LAMINA, "restore", "--repo", setup["repo"], newest, str(target), "-q"],
        check=True,
        env=env,
        capture_output=True,
    )
    assert sha256_file(target) == sha256_file(volume)
    # The controller released its locks on SIGTERM.
    listed = subprocess.run(
        [*LAMINA, "locks", "--repo", setup["repo"]], env=env, capture_output=True, text=True
    )
    assert listed.stdout.strip() == "no locks", listed.stdout + listed.stderr
    shown = json.loads(lamina("schedule", "ls", "--json", "--catalog", catalog_url).stdout)
    assert [s["name"] for s in shown] == ["db", "nightly"]
    assert shown[1]["last_state"] in ("succeeded", "cancelled")
    assert shown[1]["retention"] == {"last": 2}


def test_pause_resume_and_run_now(catalog_url: str, setup: dict[str, str], tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "db.img", 2 * MiB)
    add(catalog_url, setup, "hourly", "--volume", "db", "--source", str(volume), "--every", "1h")
    with controller(catalog_url, tmp_path / "controller.log"):
        lamina("schedule", "run-now", "hourly", "--catalog", catalog_url)
        wait_for(lambda: len(jobs(catalog_url, "backup", "succeeded")) == 1, "the run-now backup")
        wait_for(
            lambda: schedule_row(catalog_url, "hourly")["last_state"] == "succeeded",
            "the run recorded on the schedule",
        )
        lamina("schedule", "pause", "hourly", "--catalog", catalog_url)
        listed = lamina("schedule", "ls", "--catalog", catalog_url).stdout
        assert re.search(r"^hourly\s+paused\s+every 1h", listed, re.M), listed
        # run-now runs a paused schedule once, and it stays paused.
        lamina("schedule", "run-now", "hourly", "--catalog", catalog_url)
        wait_for(lambda: len(jobs(catalog_url, "backup", "succeeded")) == 2, "the second run")
        wait_for(
            lambda: not schedule_row(catalog_url, "hourly")["run_once"], "the run-now consumed"
        )
        row = schedule_row(catalog_url, "hourly")
        assert row["paused"] is True
        resumed = lamina("schedule", "resume", "hourly", "--catalog", catalog_url).stdout
        assert "resumed schedule hourly; next run" in resumed
        row = schedule_row(catalog_url, "hourly")
        assert row["paused"] is False and float(str(row["next_run"])) > time.time()
    assert len(jobs(catalog_url, "backup")) == 2


def test_missed_slots_after_downtime_are_one_run(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "db.img", 2 * MiB)
    # Made three and a half hours ago, hourly, and no controller ran since: three slots missed.
    made = time.time() - 3.5 * 3600
    Schedules(catalog_url).add(
        "hourly",
        repository=setup["repo"],
        every="1h",
        volume="prod/db",
        source=str(volume),
        local_root=setup["root"],
        password_file=setup["password_file"],
        now=made,
    )
    log = tmp_path / "controller.log"
    with controller(catalog_url, log):
        wait_for(
            lambda: schedule_row(catalog_url, "hourly")["last_state"] == "succeeded",
            "the catch-up run",
        )
    assert "hourly: 3 missed slots, run once now" in log.read_text()
    assert len(jobs(catalog_url, "backup")) == 1
    # The next slot is the first on the grid after now: half an hour on, not a backlog.
    assert float(str(schedule_row(catalog_url, "hourly")["next_run"])) == pytest.approx(
        made + 4 * 3600
    )


def test_two_controllers_never_run_one_slot_twice(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        volume = make_volume(tmp_path / f"{name}.img", 1 * MiB, seed=ord(name))
        add(catalog_url, setup, name, "--volume", name, "--source", str(volume), "--every", "1s")
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    with controller(catalog_url, logs[0]), controller(catalog_url, logs[1]):
        wait_for(lambda: len(jobs(catalog_url, "backup")) >= 12, "twelve scheduled backups")
    slots = [
        m.groups()
        for log in logs
        for m in re.finditer(r"(\w+): backup started \(slot ([0-9.e+]+)\)", log.read_text())
    ]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    # Every backup job in the history is one claimed slot.
    assert len(jobs(catalog_url, "backup")) == len(slots)


def test_racing_claims_of_one_slot_have_one_winner(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "db.img", 1 * MiB)
    info = Schedules(catalog_url).add(
        "db",
        repository=setup["repo"],
        every="1s",
        volume="db",
        source=str(volume),
        local_root=setup["root"],
        password_file=setup["password_file"],
    )
    catalogs = [Catalog.open(catalog_url) for _ in range(6)]
    barrier = threading.Barrier(len(catalogs))
    wins: list[bool] = []

    def claim(catalog: Catalog) -> None:
        barrier.wait()
        wins.append(claim_slot(catalog, "db", info.next_run, info.next_run + 1, "t", time.time()))

    threads = [threading.Thread(target=claim, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in catalogs:
        c.close()
    assert sorted(wins) == [False] * 5 + [True]


def test_a_failing_schedule_is_recorded_and_never_stops_the_others(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    good = make_volume(tmp_path / "good.img", 1 * MiB)
    gone = make_volume(tmp_path / "gone.img", 1 * MiB, seed=2)
    add(catalog_url, setup, "good", "--volume", "good", "--source", str(good), "--every", "1s")
    add(catalog_url, setup, "gone", "--volume", "gone", "--source", str(gone), "--every", "1s")
    wrong = tmp_path / "wrong-password"
    wrong.write_bytes(PASSWORD)
    lamina(
        "schedule",
        "add",
        "locked",
        "--repo",
        setup["repo"],
        "--password-file",
        str(wrong),
        "--prune",
        "--every",
        "1s",
        "--catalog",
        catalog_url,
    )
    gone.unlink()  # the source goes away after the schedule was made
    wrong.write_bytes(b"not the password")  # and the password changes
    with controller(catalog_url, tmp_path / "controller.log"):
        wait_for(
            lambda: (
                len(jobs(catalog_url, "backup", "succeeded")) >= 3
                and len(jobs(catalog_url, "backup", "failed")) >= 2
                and len(jobs(catalog_url, "prune", "failed")) >= 2
            ),
            "good runs and failed ones",
        )
    failed = jobs(catalog_url, "backup", "failed")
    assert {j.volume for j in failed} == {"local/default/gone"}
    assert all(j.error and "\n" not in j.error and "gone" in j.error for j in failed)
    pruned = jobs(catalog_url, "prune", "failed")
    assert all(j.error and "password" in j.error and "\n" not in j.error for j in pruned)
    assert {j.volume for j in jobs(catalog_url, "backup", "succeeded")} == {"local/default/good"}
    listed = lamina("schedule", "ls", "--catalog", catalog_url).stdout
    assert re.search(r"^gone\s+active.*failed", listed, re.M), listed
    assert "last error: " in listed


def test_bad_schedules_are_refused_in_one_line(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "db.img", 1 * MiB)
    base = [
        "schedule",
        "add",
        "--repo",
        setup["repo"],
        "--password-file",
        setup["password_file"],
        "--local-root",
        setup["root"],
        "--catalog",
        catalog_url,
    ]
    source = ["--volume", "db", "--source", str(volume)]
    add(catalog_url, setup, "db", *source, "--every", "1h")
    cases = {
        "not a cron expression": ["x", *source, "--cron", "61 * * * *"],
        "give one of --every INTERVAL or --cron EXPRESSION": ["x", *source],
        "not an interval": ["x", *source, "--every", "soon"],
        "shorter than one second": ["x", *source, "--every", "0s"],
        "exists already": ["db", *source, "--every", "1h"],
        "no source": [
            "x",
            "--volume",
            "x",
            "--source",
            str(tmp_path / "none.img"),
            "--every",
            "1h",
        ],
        "needs --volume NAME and --source": ["x", "--every", "1h"],
        "a prune schedule takes no --keep-* options": [
            "x",
            "--prune",
            "--every",
            "1h",
            "--keep-last",
            "2",
        ],
    }
    for message, args in cases.items():
        result = lamina(*base, *args, ok=False)
        assert result.returncode != 0, args
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "internal error" not in result.stderr
    both = lamina(*base, "x", *source, "--every", "1h", "--cron", "* * * * *", ok=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    for action in ("rm", "pause", "resume", "run-now"):
        result = lamina("schedule", action, "nope", "--catalog", catalog_url, ok=False)
        assert result.returncode != 0
        assert result.stderr.strip() == "lamina: error: no schedule 'nope'"
    shown = json.loads(lamina("schedule", "ls", "--json", "--catalog", catalog_url).stdout)
    assert [s["name"] for s in shown] == ["db"]  # nothing refused was stored


def test_schedule_list_escapes_what_the_catalog_holds(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "db\x1b[31m.img", 1 * MiB)
    add(catalog_url, setup, "db", "--volume", "db", "--source", str(volume), "--every", "1h")
    listed = lamina("schedule", "ls", "--catalog", catalog_url).stdout
    assert "\x1b" not in listed and "db\\x1b[31m.img" in listed, listed


def test_policy_from_forget_options() -> None:
    policy = policy_from_options(last=3, daily=7, within="2d")
    assert (policy.last, policy.daily, policy.within and policy.within.days) == (3, 7, 2)


def test_a_run_whose_controller_was_killed_shows_as_interrupted_and_runs_again(
    catalog_url: str, setup: dict[str, str], tmp_path: Path
) -> None:
    volume = tmp_path / "big.img"
    with open(volume, "wb") as f:  # incompressible: the backup takes a while to read it
        for _ in range(96):
            f.write(os.urandom(MiB))
    add(catalog_url, setup, "big", "--volume", "big", "--source", str(volume), "--every", "1h")
    lamina("schedule", "run-now", "big", "--catalog", catalog_url)
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        killed = subprocess.Popen(
            [*LAMINA, "controller", "--local", "--catalog", catalog_url, "--poll", "0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: jobs(catalog_url, "backup", "running"), "the backup running")
    finally:
        killed.kill()
        killed.wait(timeout=30)
    listed = lamina("schedule", "ls", "--catalog", catalog_url).stdout
    assert re.search(r"^big\s+active.*interrupted", listed, re.M), listed
    assert f"its controller ({os.uname().nodename}, pid {killed.pid}) ended" in listed
    lamina("schedule", "run-now", "big", "--catalog", catalog_url)
    with controller(catalog_url, tmp_path / "controller.log"):
        wait_for(lambda: jobs(catalog_url, "backup", "succeeded"), "the backup run again")
    states = sorted(j.state for j in jobs(catalog_url, "backup"))
    assert states == ["interrupted", "succeeded"]
