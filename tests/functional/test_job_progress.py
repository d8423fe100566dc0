"""What a job tells the person watching it: its phase, a percentage, a rate and an ETA.

The backup is a real local-cluster backup (snapshot, CBT over gRPC on loopback) into a
real repository, followed in process and over a real lamina.v1 server, as the TUI does.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lamina.backend.cli.common import _bar
from lamina.backend.engine import locks
from lamina.backend.progress import Progress
from lamina.backend.service import Job, JobState, JobView, LaminaService, Service
from lamina.backend.service.remote import ApiClient, RemoteService
from lamina.tui.widgets.jobs import job_line, rate_text
from tests.support.api_server import TOKEN, MiB, running_server, slow_image, slow_repository


@pytest.fixture
def service(tmp_path: Path) -> Service:
    image = slow_image(tmp_path / "pg.img", 8 * MiB, seed=5)
    service = Service(slow_repository(tmp_path / "repo"), local_root=str(tmp_path / "cluster"))
    service.add_local_volume("db", "pg-data", str(image))
    return service


def follow(client: LaminaService, job_id: str) -> list[JobView]:
    views: list[JobView] = []
    done = threading.Event()

    def listen(view: JobView) -> None:
        views.append(view)
        if view.finished:
            done.set()

    unwatch = client.watch_job(job_id, listen)
    try:
        assert done.wait(120), "the job did not finish"
    finally:
        unwatch()
    return views


def test_a_volume_backup_reports_its_snapshot_then_a_total(service: Service) -> None:
    # Another process holds the repository: the backup waits for it, so that every
    # phase after the wait is seen from its first event on.
    held = locks.acquire(service.repo, locks.EXCLUSIVE, "a test holding the repository")
    assert held is not None
    job = service.start_volume_backup("local", "db", "pg-data")
    seen: list[Progress] = []
    job.subscribe(lambda j: seen.append(j.progress) if j.progress else None)
    held.release()
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error

    phases = list(dict.fromkeys(p.phase for p in seen))
    assert phases[:1] == ["taking a snapshot"], phases
    assert "backing up" in phases and phases[-1] == "done"
    backing_up = [p for p in seen if p.phase == "backing up"]
    # The CBT ranges stream in, yet the backup knows how much it will read.
    assert all(p.total == 8 * MiB for p in backing_up)
    assert any(p.eta is not None and 0 < (p.fraction or 0) < 1 for p in backing_up)
    line = _bar(backing_up[-1])
    assert "%" in line and "backing up" in line


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "grpc"])
def test_the_ui_sees_percent_rate_and_eta_and_honest_figures(
    service: Service, tmp_path: Path, remote: bool
) -> None:
    def run(client: LaminaService) -> None:
        views = follow(client, client.start_volume_backup("local", "db", "pg-data").id)
        assert views[-1].state == "succeeded", views[-1].error
        running = [v for v in views if v.phase == "backing up" and not v.finished]
        assert running and all(v.total == 8 * MiB for v in running)
        moving = [v for v in running if v.fraction is not None and 0 < v.fraction < 1]
        assert moving, "no view showed the backup part done"
        shown = job_line(moving[-1]).plain
        assert "backing up" in shown and "%" in shown and "ETA -" not in shown
        point = views[-1].point
        assert point is not None

        # A quick verify counts points, not bytes: no "7 B/s".
        verify = follow(client, client.start_verify(point).id)[-1]
        assert verify.state == "succeeded" and verify.unit == "points"
        assert rate_text(verify) == "-"

        # A restore reads from the repository: READ is not 0 B.
        target = tmp_path / f"restored-{remote}.img"
        restore = follow(client, client.start_restore(point, str(target)).id)[-1]
        assert restore.state == "succeeded", restore.error
        assert restore.read > 0

        # Phases are shown whole.
        deep = follow(client, client.start_verify(point, deep=True).id)
        assert any(v.phase == "reading pieces" for v in deep)
        assert (
            "reading pieces" in job_line(next(v for v in deep if v.phase == "reading pieces")).plain
        )

    try:
        if remote:
            with running_server(service, allowed_paths=[str(tmp_path)]) as server:
                run(RemoteService(ApiClient(server.address, token=TOKEN)))
        else:
            run(service)
    finally:
        service.close()


def test_a_cancelled_job_no_longer_names_its_last_phase(service: Service) -> None:
    job: Job = service.start_volume_backup("local", "db", "pg-data")
    started = threading.Event()
    job.subscribe(
        lambda j: started.set() if j.progress and j.progress.phase == "backing up" else None
    )
    assert started.wait(60)
    job.cancel()
    job.wait()
    assert job.state == JobState.CANCELLED
    assert job.progress is not None and job.progress.phase == "cancelled"
    view = service.job_view(job.id)
    assert view.phase == "cancelled" and "backing up" not in job_line(view).plain
    service.close()
