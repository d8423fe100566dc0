"""The backup caps live in the service: every front end of one process shares one queue.

Repositories at zstd level 19 (tests/support/api_server.py) make each backup last seconds,
so a second backup surely starts while the first still runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.service import BackupCaps, Job, JobState, Service
from lamina.protos import lamina_v1_pb2 as pb
from tests.support.api_server import (
    AUTH,
    LAMINA,
    MiB,
    running_server,
    slow_image,
    slow_repository,
    stub_for,
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    service = Service(slow_repository(tmp_path / "repo"), local_root=str(tmp_path / "cluster"))
    try:
        yield service
    finally:
        for job in service.jobs():
            job.cancel()
        for job in service.jobs():
            job.wait(60)
        service.close()


def finished(job: Job) -> Job:
    assert job.wait(120), f"{job.description} did not end"
    return job


def test_two_in_process_front_ends_never_overlap_on_one_volume(
    tmp_path: Path, service: Service
) -> None:
    image = slow_image(tmp_path / "db.img", 4 * MiB, seed=41)
    service.add_local_volume("prod", "db", str(image))
    tui = service  # what the TUI holds

    first = service.start_volume_backup("local", "prod", "db")  # what `lamina` runs
    second_id = tui.start_volume_backup("local", "prod", "db").id  # the TUI's backup key
    second = service.job(second_id)
    assert first.state == JobState.RUNNING, first.error
    assert tui.job_view(second_id).state == "queued"
    assert second.queue_position == 1

    finished(first)
    finished(second)
    assert (first.state, second.state) == (JobState.SUCCEEDED, JobState.SUCCEEDED), (
        first.error,
        second.error,
    )
    assert first.finished is not None and second.started is not None
    assert second.started >= first.finished  # never interleaved
    assert second.result.parent == first.result.id  # it built on the first one's point


def test_a_queued_backup_cancelled_ends_without_running(tmp_path: Path, service: Service) -> None:
    service.set_backup_caps(BackupCaps(max_backups=1))
    images = [slow_image(tmp_path / f"{n}.img", 3 * MiB, seed=50 + i) for i, n in enumerate("abc")]
    a, b, c = (service.start_backup(str(image), f"caps/{image.stem}") for image in images)
    assert a.state == JobState.RUNNING
    assert (b.state, b.queue_position) == (JobState.QUEUED, 1)
    assert (c.state, c.queue_position) == (JobState.QUEUED, 2)
    verify = service.start_verify()  # only backups wait for a slot
    assert verify.state != JobState.QUEUED

    service.cancel_job(b.id)
    assert b.done  # at once: it never held a slot
    assert (b.state, b.error, b.started) == (
        JobState.CANCELLED,
        "cancelled before it started",
        None,
    )
    assert not any(" started: " in line for line in b.log)  # the job's own first line
    assert (c.state, c.queue_position) == (JobState.QUEUED, 1)

    service.set_backup_caps(BackupCaps(max_backups=2))  # a raised cap starts the next at once
    assert c.state != JobState.QUEUED and c.queue_position == 0
    for job in (a, c, verify):
        assert finished(job).state == JobState.SUCCEEDED, job.error
    volumes = {p.volume.name for p in service.list_points()}
    assert volumes == {"a", "c"}


def test_the_api_and_the_in_process_front_ends_share_the_queue(
    tmp_path: Path, service: Service
) -> None:
    service.set_backup_caps(BackupCaps(max_backups=3, max_backups_per_volume=1))
    image = slow_image(tmp_path / "shared.img", 3 * MiB, seed=61)
    with running_server(service) as server, stub_for(server.address) as stub:
        limits = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).limits
        assert (limits.max_backups, limits.max_backups_per_volume) == (3, 1)
        local = service.start_backup(str(image), "shared/vol")
        task = stub.StartBackup(
            pb.StartBackupRequest(source=str(image), volume="shared/vol"), metadata=AUTH
        )
        assert local.state == JobState.RUNNING
        assert (task.state, task.queue_position) == (pb.TASK_STATE_QUEUED, 1)
        states = [t.state for t in stub.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=AUTH)]
        assert states[-1] == pb.TASK_STATE_SUCCEEDED
        assert finished(local).state == JobState.SUCCEEDED
        queued_one = service.job(task.id)
        assert queued_one.started is not None and local.finished is not None
        assert queued_one.started >= local.finished


def test_caps_below_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at least 1"):
        BackupCaps(max_backups=0)
    result = subprocess.run(
        [
            *LAMINA,
            "serve",
            "--repo",
            str(tmp_path),
            "--insecure-no-auth",
            "--max-backups-per-volume",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "lamina: error: --max-backups and --max-backups-per-volume must be at least 1"
    ], result.stderr
