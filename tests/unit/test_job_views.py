"""The one view of a job, its one summary, and the wire between server and RemoteService.

Every front end shows a job as ``jobs.view_of`` builds it, with ``jobs.summary``; the
server sends it with ``wire.job_message`` and RemoteService reads it back with
``wire.job_view``. Each result type must come back as the very model it left as.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from lamina.backend.progress import Progress
from lamina.backend.service import (
    ExtractReport,
    FileEntry,
    ForgetDecision,
    ForgetReport,
    Job,
    JobState,
    LockInfo,
    MountInfo,
    PointInfo,
    PruneReport,
    RestoreReport,
    Skipped,
    VerifyReport,
    VolumeRef,
    summary,
    view_of,
    wire,
)

VOLUME = VolumeRef("local", "demo", "app-data")


def _point(id: str = "4c1d9e07a2b35f68", parent: str | None = None) -> PointInfo:
    return PointInfo(
        id=id,
        parent=parent,
        kind="incremental" if parent else "full",
        volume=VOLUME,
        created="2026-03-11T02:00:05Z",
        capacity=1 << 28,
        snapshot_handle="snap-1",
        image_digest="blake3:00",
        stats={"bytes_read": 3 << 20, "bytes_stored": 1 << 20, "bytes_deduplicated": 4096},
        notes=["first"],
        manifest={},
        protected=True,
        verify_state="ok",
    )


RESULTS: list[tuple[str, Any, str]] = [
    (
        "backup",
        _point(),
        "point 4c1d9e07a2b35f68: read 3.0 MiB, stored 1.0 MiB, deduplicated 4.0 KiB",
    ),
    ("consolidate", _point(), "consolidated point 4c1d9e07a2b35f68 (now a full point)"),
    (
        "restore",
        RestoreReport("4c1d9e07a2b35f68", "/srv/a.img", 1 << 28, 5 << 20, 80, "blake3:00", 9, 0.5),
        "restored 5.0 MiB to /srv/a.img",
    ),
    ("verify", VerifyReport(points=1, pieces=11), "1 point, 11 pieces checked, no problem found"),
    (
        "verify",
        VerifyReport(points=2, pieces=3, problems=["piece 7d0c does not match its id"]),
        "1 problem: piece 7d0c does not match its id",
    ),
    (
        "extract",
        ExtractReport(
            "/srv/out", files=2, directories=1, bytes=4096, skipped=[Skipped("/x", "fifo")]
        ),
        "extracted 2 files, 1 folder, 4.0 KiB to /srv/out; skipped 1: /x: fifo",
    ),
    (
        "forget",
        ForgetReport(True, [ForgetDecision(_point(), True, ["last 1"])], []),
        "dry run: would keep 1 point, remove 0",
    ),
    (
        "prune",
        PruneReport(dry_run=False, packs_deleted=1, bytes_total=1 << 20, bytes_reclaimed=4096),
        "reclaimed 4.0 KiB of 1.0 MiB: 1 pack deleted, 0 repacked",
    ),
    ("delete", ["9a0f3b6c71e2d584"], "deleted point 4c1d; its data folded into 9a0f3b6c71e2d584"),
]


def _finished(kind: str, result: Any, state: str = JobState.SUCCEEDED) -> Job:
    job = Job(kind=kind, description=f"{kind} something", point="4c1d", volume=VOLUME)
    job.state, job.result = state, result
    job.started, job.finished = job.created + 1.0, job.created + 3.5
    job.progress = Progress("done", 7, 7, read=7, unit="points")
    job.log.append("12:00:00 started")
    job._done.set()
    return job


@pytest.mark.parametrize(("kind", "result", "text"), RESULTS)
def test_every_outcome_has_its_one_line(kind: str, result: Any, text: str) -> None:
    assert summary(kind, JobState.SUCCEEDED, None, result, "4c1d") == text


def test_a_job_that_did_not_succeed_says_why_and_one_that_runs_says_nothing() -> None:
    assert summary("backup", JobState.FAILED, "disk full", None) == "disk full"
    assert summary("backup", JobState.CANCELLED, None, None) == "cancelled"
    assert summary("backup", JobState.RUNNING, None, None) == ""


@pytest.mark.parametrize(("kind", "result", "text"), RESULTS)
def test_a_view_crosses_the_wire_and_comes_back_the_same(kind: str, result: Any, text: str) -> None:
    view = view_of(_finished(kind, result))
    assert view.summary == text and view.elapsed == 2.5 and view.finished
    assert view.point == (result.id if isinstance(result, PointInfo) else "4c1d")
    back = wire.job_view(wire.job_message(view, include_log=True))
    assert back == view
    assert back.result == view.result and type(back.result) is type(view.result)


def test_a_queued_or_cancelling_view_keeps_what_it_is() -> None:
    job = Job(kind="backup", description="back up", volume=VOLUME)
    job.queue_position = 2
    queued = view_of(job)
    assert (queued.state, queued.queue_position, queued.phase) == ("queued", 2, "queued")
    job.state = JobState.RUNNING
    running = view_of(job, cancelling=True)
    assert (running.state, running.queue_position, running.finished) == ("cancelling", 0, False)
    assert wire.job_view(wire.job_message(running)).state == "cancelling"


def test_the_plain_models_cross_the_wire_unchanged() -> None:
    point = _point(parent="9a0f3b6c71e2d584")
    assert wire.point_info(wire.point_message(point)) == point
    mount = MountInfo("/mnt/x", None, 42, "/srv/repo")
    assert wire.mount_info(wire.mount_message(mount)) == mount
    now = float(int(time.time()))
    lock = LockInfo("locks/a", "shared", "backup", "host", 7, now, now + 60)
    assert wire.lock_info(wire.lock_message(lock)) == lock
    entry = FileEntry.folder("/etc", "etc")
    assert wire.file_entry(wire.entry_message(entry), "/") == entry
    progress = Progress("restoring", 5, None, rate=2.0, eta=None, elapsed=1.5)
    assert wire.progress(wire.progress_message(progress)) == progress
