"""Copy, compare and delta restore through the lamina.v1 API: a real server on loopback.

The server's repository is one side of a copy or a comparison; the other is a folder of
the server's machine (under its --allow-path) or an S3 bucket (SeaweedFS). Each test gets a
small repository of its own: a chain of two points of one 2 MiB volume.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.errors import LaminaError
from lamina.backend.service import (
    CompareReport,
    CopyReport,
    Job,
    JobRecord,
    JobState,
    PointInfo,
    Service,
    init_repository,
)
from lamina.backend.service.remote import ApiClient, RemoteService
from tests.support.api_server import TOKEN, MiB, running_server, slow_image, slow_repository
from tests.support.volumes import make_volume, scribble, sha256_file

KiB = 1024
VOLUME = "lab/db"
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


@dataclass
class Site:
    root: Path  # the server's only --allow-path
    url: str
    service: Service  # the server's own
    remote: RemoteService  # the same, through the server
    address: str
    image: Path
    points: list[PointInfo]  # VOLUME's chain, oldest first
    digests: dict[str, str]  # sha256 of the image each point was taken of

    def backup(self, image: Path, volume: str = VOLUME) -> PointInfo:
        job = self.service.start_backup(str(image), volume)
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
        point: PointInfo = job.result
        self.digests[point.id] = sha256_file(image)
        return point


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    url = str(tmp_path / "here")
    init_repository(url, grid_size=256 * KiB)
    service = Service(url, lock_wait=0, catalog=f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    image = make_volume(tmp_path / "db.img", 2 * MiB, seed=11)
    with running_server(service, allowed_paths=[str(tmp_path)]) as server:
        remote = RemoteService(ApiClient(server.address, token=TOKEN))
        s = Site(tmp_path, url, service, remote, server.address, image, [], {})
        for step in range(2):
            if step:
                scribble(image, 6, 64 * KiB, seed=step)
            s.points.append(s.backup(image))
        try:
            yield s
        finally:
            remote.close()


def finished(job: Job) -> object:
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    return job.result


def copy_records(site: Site, states: list[str]) -> list[JobRecord]:
    """The copy jobs of the server's history once they are in these states: the catalog's
    writer thread records a job's end a moment after the job itself ends."""
    deadline = time.monotonic() + 30
    while True:
        records = site.remote.list_history(kind="copy").jobs
        if [r.state for r in records] == states:
            return records
        assert time.monotonic() < deadline, records
        time.sleep(0.05)


def restored_digest(service: Service, point: str, target: Path) -> str:
    finished(service.start_restore(point, str(target)))
    digest = sha256_file(target)
    target.unlink()
    return digest


def test_copy_to_s3_through_the_server_is_a_job_with_history_and_requests(
    site: Site, s3_repo_url: str
) -> None:
    init_repository(s3_repo_url, grid_size=256 * KiB)
    ids = [p.id for p in site.points]

    before = site.remote.compare(s3_repo_url)
    assert isinstance(before, CompareReport)
    [volume] = before.volumes
    assert volume.only_left == ids and volume.right_behind_points == 2
    assert volume.right_behind_bytes > 0 and volume.newest_common is None

    job = site.remote.start_copy(s3_repo_url, volume=VOLUME)
    report = finished(job)
    assert isinstance(report, CopyReport)
    assert sorted(report.copied) == sorted(ids) and report.mode == "as-is"
    assert report.bytes_uploaded > 0
    assert job.progress is not None  # mirrored from the server's task
    other = Service(s3_repo_url)
    for point_id in ids:
        assert restored_digest(other, point_id, site.root / "out.img") == site.digests[point_id]

    # A service job like the others: in the server's history, its S3 requests counted.
    [record] = copy_records(site, ["succeeded"])
    assert record.id == job.id
    # Every upload counts, also those of the copy's worker threads.
    assert record.requests.get("put", 0) > 0 and record.bytes_up >= report.bytes_uploaded

    # A delta restore from S3 counts the pieces its worker threads download.
    target = site.root / "target.img"
    finished(other.start_restore(ids[0], str(target)))
    delta = other.start_restore(ids[-1], str(target), delta=True)
    result = finished(delta)
    assert isinstance(result, dict)
    counts = other.job_requests(delta.id)
    assert counts is not None and counts.bytes_down >= result["bytes_downloaded"] > 0
    assert sha256_file(target) == site.digests[ids[-1]]
    target.unlink()

    # The chain grows by one point: the comparison says so, and a second copy moves it alone.
    scribble(site.image, 4, 64 * KiB, seed=9)
    newest = site.backup(site.image)
    [volume] = site.remote.compare(s3_repo_url, volume=VOLUME).volumes
    assert volume.both == ids and volume.only_left == [newest.id] and not volume.only_right
    assert volume.newest_common == ids[-1]
    assert (volume.right_behind_points, volume.left_behind_points) == (1, 0)
    again = finished(site.remote.start_copy(s3_repo_url, points=[newest.id]))
    assert isinstance(again, CopyReport)
    assert again.copied == [newest.id] and sorted(again.present) == sorted(ids)
    assert again.bytes_uploaded < report.bytes_uploaded
    assert site.remote.compare(s3_repo_url).in_sync


def test_copy_from_an_encrypted_repository_into_the_server_s(site: Site) -> None:
    other = str(site.root / "vault")
    password = b"vault password"
    init_repository(other, grid_size=256 * KiB, password=password)
    vault = Service(other, password=password)
    web = make_volume(site.root / "web.img", 1 * MiB, seed=21)
    point = finished(vault.start_backup(str(web), "lab/web"))
    assert isinstance(point, PointInfo)

    for wrong in (None, b"not the password"):
        with pytest.raises(LaminaError) as refused:
            site.remote.start_copy(other, direction="from", other_password=wrong)
        assert "\n" not in str(refused.value) and "password" in str(refused.value)
    assert site.service.list_points("lab/web") == []

    report = finished(site.remote.start_copy(other, direction="from", other_password=password))
    assert isinstance(report, CopyReport)
    assert report.copied == [point.id] and report.mode == "re-encoded"
    [copied] = site.service.list_points("lab/web")
    assert copied.id == point.id
    assert restored_digest(site.service, point.id, site.root / "out.img") == sha256_file(web)


def test_cancelling_a_copy_through_the_server_leaves_no_point(site: Site) -> None:
    # Level 19 on the destination: every piece is re-encoded slowly, so the copy is caught
    # while it runs.
    other = slow_repository(site.root / "slow")
    site.backup(slow_image(site.root / "slow.img", 4 * MiB, seed=5), "lab/slow")
    job = site.remote.start_copy(other, volume="lab/slow")
    moving = threading.Event()
    job.subscribe(lambda j: moving.set() if j.progress and j.progress.done > 0 else None)
    assert moving.wait(60) or job.done, "the copy never reported progress"
    assert not job.done, f"the copy ended before it could be cancelled: {job.state}"
    job.cancel()
    job.wait()
    assert job.state == JobState.CANCELLED, job.error
    assert Service(other).list_points() == []
    copy_records(site, ["cancelled"])


def test_delta_restore_through_the_server(site: Site) -> None:
    first, last = site.points
    target = site.root / "target.img"
    finished(site.service.start_restore(first.id, str(target)))

    result = finished(site.remote.start_restore(last.id, str(target), delta=True))
    assert isinstance(result, dict)
    # The full restore's record still matches: the maps' difference, a sample read.
    assert result["point"] == last.id and result["assumed_from"] == first.id
    assert result["basis"] == "record"
    assert 0 < result["bytes_written"] < last.capacity
    assert result["bytes_read_target"] > 0
    assert sha256_file(target) == site.digests[last.id]

    job = site.remote.start_restore(first.id, str(target), delta=True, assume_from=last.id)
    back = finished(job)
    assert isinstance(back, dict)
    assert back["assumed_from"] == last.id and back["bytes_read_target"] < last.capacity
    assert sha256_file(target) == site.digests[first.id]
    assert "differed" in site.remote.job_view(job.id).summary


def test_bad_requests_are_refused_in_one_line_and_write_nothing(site: Site) -> None:
    outside = str(site.root.parent / f"{site.root.name}-elsewhere")
    cases: dict[str, Callable[[], object]] = {
        "the same repository": lambda: site.remote.compare(site.url),
        "outside the folders": lambda: site.remote.start_copy(outside),
        "'to' or 'from'": lambda: site.remote.start_copy(
            str(site.root / "x"), direction="sideways"
        ),
        "s3:// URL or a folder": lambda: site.remote.compare("ftp://example/x"),
        "does not exist": lambda: site.remote.start_restore(
            site.points[0].id, str(site.root / "missing.img"), delta=True
        ),
        "needs --delta": lambda: site.remote.start_restore(
            site.points[0].id, str(site.root / "t.img"), assume_from=site.points[0].id
        ),
    }
    for expected, call in cases.items():
        with pytest.raises(LaminaError) as refused:
            call()
        message = str(refused.value)
        assert "\n" not in message and "internal error" not in message, message
        assert expected in message, message
    small = site.root / "small.img"
    small.write_bytes(b"\1" * 4096)
    with pytest.raises(LaminaError, match="less than the volume"):
        site.remote.start_restore(site.points[0].id, str(small), delta=True)
    assert small.read_bytes() == b"\1" * 4096
    assert not Path(outside).exists()
    assert site.remote.list_history(kind="copy").jobs == []


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)


def test_copy_compare_and_delta_restore_with_the_cli_s_server_option(site: Site) -> None:
    token = site.root / "token"
    token.write_text(TOKEN + "\n")
    server = ["--server", site.address, "--token-file", str(token)]
    other = str(site.root / "second")
    init_repository(other, grid_size=256 * KiB)

    copied = lamina("copy", *server, "--to", other, "--json", "-q")
    assert copied.returncode == 0, copied.stderr
    assert sorted(json.loads(copied.stdout)["copied"]) == sorted(p.id for p in site.points)

    compared = lamina("compare", *server, other, "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["in_sync"] is True

    target = site.root / "target.img"
    finished(site.service.start_restore(site.points[0].id, str(target)))
    restored = lamina("restore", *server, site.points[1].id, str(target), "--delta", "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["bytes_written"] > 0
    assert sha256_file(target) == site.digests[site.points[1].id]

    for bad, expected in (
        (["copy", *server, "--from", other, "--to", other], "not both"),
        (["compare", *server, other, other], "give one REPO"),
        (["copy", "--from", other, "--token-file", str(token), "--to", site.url], "--server"),
    ):
        result = lamina(*bad)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("lamina: error: ") and expected in lines[0], lines[0]
