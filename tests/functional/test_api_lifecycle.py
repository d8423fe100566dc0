"""Retention, prune, consolidation, locks and FUSE mounts through the lamina.v1 API.

Each test gets its own small repository (a chain of four points of one volume and one
point of another) behind a real server on loopback whose --allow-path is one folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from lamina.backend.api.server import ApiServer
from lamina.backend.engine.lifecycle import Policy
from lamina.backend.engine.locks import SHARED, acquire
from lamina.backend.engine.prune import PruneReport
from lamina.backend.errors import LaminaError, UsageError
from lamina.backend.service import (
    ForgetReport,
    JobState,
    PointInfo,
    RestoreReport,
    Service,
    init_repository,
)
from lamina.backend.service.remote import ApiClient, RemoteService
from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc
from lamina.tui.client import mount_point, mounted_points, unmount_point
from tests.support.api_server import AUTH, TOKEN, MiB, running_server, stub_for
from tests.support.volumes import make_volume, scribble, sha256_file

VOLUME = "lab/db"
OTHER = "lab/cache"


@dataclass
class Lab:
    allowed: Path  # the server's only --allow-path
    service: Service
    server: ApiServer
    stub: pb_grpc.LaminaServiceStub
    points: list[PointInfo]  # the chain of VOLUME, oldest first
    digests: dict[str, str]  # sha256 of the image each point was taken of
    other: PointInfo


def _backup(service: Service, image: Path, volume: str) -> PointInfo:
    job = service.start_backup(str(image), volume)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    point: PointInfo = job.result
    return point


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    url = str(tmp_path / "repo")
    # Fingerprint blocks as large as the grid: each scan stores whole cells again, so the
    # points forget removes leave whole packs of data for prune to reclaim.
    init_repository(url, grid_size=256 * 1024, fingerprint_block=256 * 1024)
    service = Service(url, lock_wait=0)
    image = make_volume(tmp_path / "db.img", 2 * MiB, seed=7)
    points, digests = [], {}
    for round_ in range(4):
        if round_:
            scribble(image, 6, 64 * 1024, seed=round_)
        point = _backup(service, image, VOLUME)
        points.append(point)
        digests[point.id] = sha256_file(image)
    other = _backup(service, make_volume(tmp_path / "cache.img", 1 * MiB, seed=3), OTHER)
    digests[other.id] = sha256_file(tmp_path / "cache.img")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with (
        running_server(service, allowed_paths=[str(allowed)]) as server,
        stub_for(server.address) as stub,
    ):
        yield Lab(allowed, service, server, stub, points, digests, other)
    service.close()


def _finish(stub: pb_grpc.LaminaServiceStub, task: pb.Task) -> pb.Task:
    final = list(stub.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=AUTH))[-1]
    assert final.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED)
    return final


def _succeeded(stub: pb_grpc.LaminaServiceStub, task: pb.Task) -> pb.Task:
    final = _finish(stub, task)
    assert final.state == pb.TASK_STATE_SUCCEEDED, final.error
    return final


def _refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, metadata=AUTH)  # type: ignore[operator]
    return refused.value


def _point_ids(lab: Lab) -> set[str]:
    listed = lab.stub.ListPoints(pb.ListPointsRequest(), metadata=AUTH)
    return {p.id for p in listed.points}


def _restores_exactly(lab: Lab, point: str) -> None:
    target = lab.allowed / f"restored-{point}.img"
    request = pb.StartRestoreRequest(point=point, target=str(target))
    _succeeded(lab.stub, lab.stub.StartRestore(request, metadata=AUTH))
    assert sha256_file(target) == lab.digests[point], f"point {point} restores differently"
    target.unlink()


# ---------------------------------------------------------------------------- forget, prune


def test_forget_dry_run_decides_then_the_real_run_removes(lab: Lab) -> None:
    ids = [p.id for p in lab.points]
    request = pb.StartForgetRequest(keep_last=2, volume=VOLUME, dry_run=True)
    dry = _succeeded(lab.stub, lab.stub.StartForget(request, metadata=AUTH))
    assert dry.kind == "forget" and dry.WhichOneof("result") == "forget"
    decisions = [(d.point.id, d.keep, list(d.reasons)) for d in dry.forget.decisions]
    assert decisions == [
        (ids[3], True, ["last 2"]),
        (ids[2], True, ["last 2"]),
        (ids[1], False, []),
        (ids[0], False, []),
    ]
    assert dry.forget.dry_run and list(dry.forget.removed) == []
    assert dry.summary == "dry run: would keep 2 points, remove 2"
    assert _point_ids(lab) == {*ids, lab.other.id}

    # protecting a point keeps it, with the reason given
    lab.stub.SetProtection(pb.SetProtectionRequest(point=ids[0], protected=True), metadata=AUTH)
    request = pb.StartForgetRequest(keep_last=2, volume=VOLUME)
    real = _succeeded(lab.stub, lab.stub.StartForget(request, metadata=AUTH))
    assert not real.forget.dry_run
    assert list(real.forget.removed) == [ids[1]]
    assert [d.reasons for d in real.forget.decisions if d.point.id == ids[0]] == [["protected"]]
    assert _point_ids(lab) == {ids[0], ids[2], ids[3], lab.other.id}
    for point in (ids[0], ids[2], ids[3], lab.other.id):
        _restores_exactly(lab, point)


def test_forget_refuses_bad_policies_before_any_task(lab: Lab) -> None:
    cases = [
        (pb.StartForgetRequest(), "give at least one keep_* field"),
        (pb.StartForgetRequest(keep_within="soon"), "not a duration: 'soon'"),
        (pb.StartForgetRequest(keep_daily=-1), "keep_daily must not be negative"),
    ]
    for request, expected in cases:
        error = _refused(lab.stub.StartForget, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in str(error.details()) and "\n" not in str(error.details())
    listed = lab.stub.ListTasks(pb.ListTasksRequest(), metadata=AUTH)
    assert [t.kind for t in listed.tasks] == []


def test_forget_within_a_duration_and_through_the_client(lab: Lab) -> None:
    with ApiClient(lab.server.address, token=TOKEN) as client:
        task = client.start_forget(Policy(within=timedelta(days=30)), dry_run=True)
        final = client.wait(task.id)
    assert final.state == "succeeded", final.error
    # all points are minutes apart: every one lies within 30 days of its volume's newest
    assert len(final.result.decisions) == 5
    assert all(d.keep and d.reasons[0].startswith("within 30d") for d in final.result.decisions)


def test_prune_reclaims_what_forget_left_and_points_still_restore(lab: Lab) -> None:
    ids = [p.id for p in lab.points]
    request = pb.StartForgetRequest(keep_last=1, volume=VOLUME)
    _succeeded(lab.stub, lab.stub.StartForget(request, metadata=AUTH))

    dry = _succeeded(
        lab.stub, lab.stub.StartPrune(pb.StartPruneRequest(dry_run=True), metadata=AUTH)
    )
    assert dry.kind == "prune" and dry.prune.dry_run
    assert dry.prune.points == 2 and dry.prune.pieces_live < dry.prune.pieces_total
    assert dry.prune.bytes_reclaimed > 0 and list(dry.prune.problems) == []
    assert dry.summary.startswith("would reclaim ")

    real = _succeeded(
        lab.stub, lab.stub.StartPrune(pb.StartPruneRequest(repack_below=0.9), metadata=AUTH)
    )
    assert not real.prune.dry_run and real.prune.bytes_reclaimed > 0
    assert real.prune.packs_deleted + real.prune.packs_repacked > 0
    again = _succeeded(
        lab.stub, lab.stub.StartPrune(pb.StartPruneRequest(dry_run=True), metadata=AUTH)
    )
    assert again.prune.pieces_live == again.prune.pieces_total
    assert again.prune.bytes_reclaimed == 0
    for point in (ids[3], lab.other.id):
        _restores_exactly(lab, point)
    verify = _succeeded(
        lab.stub, lab.stub.StartVerify(pb.StartVerifyRequest(deep=True), metadata=AUTH)
    )
    assert verify.verify.ok, list(verify.verify.problems)

    error = _refused(lab.stub.StartPrune, pb.StartPruneRequest(repack_below=1.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "between 0 and 1" in str(error.details())


def test_remote_service_backs_up_fixed_ranges_and_restores_with_a_report(
    lab: Lab, tmp_path: Path
) -> None:
    """A backup through RemoteService is checked here and run there: a list of changed
    ranges travels with it, a live range source of this machine is refused in one line,
    and the restore's result is the same RestoreReport as in process."""
    parent = lab.points[-1]
    image = lab.allowed / "db-next.img"
    image.write_bytes((tmp_path / "db.img").read_bytes())  # the lab's volume, as last backed up
    with open(image, "r+b") as f:
        f.seek(256 * 1024)
        f.write(b"\x5a" * 4096)
    remote = RemoteService(ApiClient(lab.server.address, token=TOKEN))
    try:
        with pytest.raises(UsageError, match="range source of this machine"):
            remote.start_backup(str(image), VOLUME, changed_ranges=lambda: [(0, 4096)])
        job = remote.start_backup(
            str(image), VOLUME, parent=parent.id, changed_ranges=[(256 * 1024, 4096)]
        )
        assert job.wait(60) and job.state == JobState.SUCCEEDED, job.error
        point = job.result
        assert isinstance(point, PointInfo) and point.parent == parent.id
        assert point.bytes_read == 4096  # the range it was given, not the 2 MiB volume

        target = lab.allowed / "restored-next.img"
        job = remote.start_restore(point.id, str(target))
        assert job.wait(60) and job.state == JobState.SUCCEEDED, job.error
        report = job.result
        assert isinstance(report, RestoreReport)
        assert (report.point, report.target, report.digest_checked) == (
            point.id,
            str(target),
            True,
        )
        assert report.pieces > 0 and report.bytes_written > 0
        assert sha256_file(target) == sha256_file(image)
        assert remote.job_view(job.id).summary.startswith("restored ")
    finally:
        remote.close()


def test_remote_service_runs_lifecycle_jobs_on_the_server(lab: Lab) -> None:
    """What the CLI's --server uses: the service layer's own results, from the server."""
    ids = [p.id for p in lab.points]
    remote = RemoteService(ApiClient(lab.server.address, token=TOKEN))
    try:
        job = remote.start_forget(Policy(last=3), volume=VOLUME)
        assert job.wait(60) and job.state == JobState.SUCCEEDED, job.error
        assert isinstance(job.result, ForgetReport) and job.result.removed == [ids[0]]
        assert [d.point.id for d in job.result.decisions if d.keep] == ids[:0:-1]

        job = remote.start_consolidate(ids[3])
        assert job.wait(60) and job.state == JobState.SUCCEEDED, job.error
        assert isinstance(job.result, PointInfo) and job.result.parent is None

        job = remote.start_prune(dry_run=True)
        assert job.wait(60) and job.state == JobState.SUCCEEDED, job.error
        assert isinstance(job.result, PruneReport) and job.result.dry_run
        assert job.result.points == 4 and job.result.problems == []
        assert remote.list_locks() == [] and remote.unlock() == []
    finally:
        remote.close()
    assert {p.id for p in lab.service.list_points()} == {*ids[1:], lab.other.id}
    for point in ids[1:]:
        _restores_exactly(lab, point)


# ---------------------------------------------------------------------------- consolidate


def _chain(lab: Lab, point: str) -> list[str]:
    chain = lab.stub.GetChain(pb.GetChainRequest(point=point), metadata=AUTH)
    return [p.id for p in chain.points]


def test_consolidate_shortens_the_chain_and_every_point_restores(lab: Lab) -> None:
    ids = [p.id for p in lab.points]
    assert _chain(lab, ids[3]) == ids[::-1]
    request = pb.StartConsolidateRequest(point=ids[3][:10], until=ids[1])
    partial = _succeeded(lab.stub, lab.stub.StartConsolidate(request, metadata=AUTH))
    assert partial.kind == "consolidate" and partial.point == ids[3]
    assert partial.consolidate.id == ids[3] and partial.consolidate.parent == ids[0]
    assert _chain(lab, ids[3]) == [ids[3], ids[0]]

    request = pb.StartConsolidateRequest(point=ids[2])
    full = _succeeded(lab.stub, lab.stub.StartConsolidate(request, metadata=AUTH))
    assert not full.consolidate.HasField("parent") and full.consolidate.kind == "full"
    assert full.summary == f"consolidated point {ids[2]} (now a full point)"
    assert _chain(lab, ids[2]) == [ids[2]]
    for point in ids:
        _restores_exactly(lab, point)

    # a full point has nothing to fold: the task fails with one line
    again = _finish(lab.stub, lab.stub.StartConsolidate(request, metadata=AUTH))
    assert again.state == pb.TASK_STATE_FAILED
    assert again.error == f"point {ids[2]} is a full point already; nothing to consolidate"
    error = _refused(lab.stub.StartConsolidate, pb.StartConsolidateRequest(point="ffffffff"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = _refused(lab.stub.StartConsolidate, pb.StartConsolidateRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------- locks


def test_locks_are_listed_block_work_and_unlock_removes_them(lab: Lab) -> None:
    stale = {
        "kind": "exclusive",
        "purpose": "prune",
        "host": "gone",
        "pid": 1,
        "created": 1000.0,
        "expires": time.time() - 3600,
    }
    lab.service.repo.storage.put("locks/deadbeef", json.dumps(stale).encode())
    held = acquire(lab.service.repo, SHARED, "a reader elsewhere")
    assert held is not None
    try:
        listed = lab.stub.ListLocks(pb.ListLocksRequest(), metadata=AUTH).locks
        by_purpose = {lock.purpose: lock for lock in listed}
        assert sorted(by_purpose) == ["a reader elsewhere", "prune"]
        assert by_purpose["prune"].stale and by_purpose["prune"].key == "locks/deadbeef"
        assert by_purpose["prune"].created.seconds == 1000
        live = by_purpose["a reader elsewhere"]
        assert not live.stale and live.kind == SHARED and live.pid == os.getpid()

        # the live shared lock holds up an exclusive prune (the server waits 0 s)
        blocked = _finish(lab.stub, lab.stub.StartPrune(pb.StartPruneRequest(), metadata=AUTH))
        assert blocked.state == pb.TASK_STATE_FAILED
        assert blocked.error.startswith("the repository is in use: shared lock for a reader")

        removed = lab.stub.Unlock(pb.UnlockRequest(), metadata=AUTH).removed
        assert [lock.key for lock in removed] == ["locks/deadbeef"]
        left = lab.stub.ListLocks(pb.ListLocksRequest(), metadata=AUTH).locks
        assert [lock.key for lock in left] == [live.key]

        with ApiClient(lab.server.address, token=TOKEN) as client:
            assert [lock.key for lock in client.unlock(all_locks=True)] == [live.key]
            assert client.list_locks() == []
        _succeeded(lab.stub, lab.stub.StartPrune(pb.StartPruneRequest(), metadata=AUTH))
    finally:
        with suppress(LaminaError):
            held.release()


# ---------------------------------------------------------------------------- mounts


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _force_unmount(path: Path) -> None:
    if _is_mounted(path):
        subprocess.run(["fusermount", "-u", "-z", str(path)], capture_output=True)
    if _is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.skipif(
    not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="/dev/fuse is not usable here"
)
def test_mount_through_the_api_serves_the_point_and_unmounts(lab: Lab, tmp_path: Path) -> None:
    point = lab.points[2]
    mountpoint = lab.allowed / "mnt"
    mountpoint.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    client = RemoteService(ApiClient(lab.server.address, token=TOKEN))
    try:
        assert client.capabilities().mount
        assert mounted_points(client) == {}

        # --allow-path covers mountpoints, symlinks resolved; relative paths are refused
        sneaky = lab.allowed / "sneaky"
        sneaky.symlink_to(outside)
        for where in (outside, sneaky):
            error = _refused(lab.stub.Mount, pb.MountRequest(point=point.id, mountpoint=str(where)))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == (
                f"the mountpoint {where} is outside the folders this server allows (--allow-path)"
            )
        error = _refused(lab.stub.Mount, pb.MountRequest(point=point.id, mountpoint="mnt"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = _refused(
            lab.stub.Mount, pb.MountRequest(point="ffffffff", mountpoint=str(mountpoint))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert not _is_mounted(outside) and not _is_mounted(mountpoint)

        assert mount_point(client, point.id[:10], str(mountpoint)) == str(mountpoint)
        assert _is_mounted(mountpoint)
        # the volume holds no filesystem, so there is no files/ tree to browse
        assert sorted(os.listdir(mountpoint)) == ["disk.img", "files.unavailable", "manifest.json"]
        assert sha256_file(mountpoint / "disk.img") == lab.digests[point.id]
        listed = lab.stub.ListMounts(pb.ListMountsRequest(), metadata=AUTH).mounts
        assert len(listed) == 1
        assert listed[0].mountpoint == str(mountpoint) and listed[0].point == point.id
        assert listed[0].pid > 0 and os.path.exists(f"/proc/{listed[0].pid}")
        assert mounted_points(client) == {point.id: str(mountpoint)}

        unmount_point(client, point.id)
        assert not _is_mounted(mountpoint)
        assert mounted_points(client) == {}
        with pytest.raises(LaminaError, match=f"point {point.id} is not mounted"):
            unmount_point(client, point.id)
    finally:
        client.close()
        for where in (mountpoint, outside):  # outside too, should a refusal ever fail
            _force_unmount(where)


@pytest.mark.skipif(
    not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="/dev/fuse is not usable here"
)
def test_mount_of_the_whole_repository_and_unmount_by_path(lab: Lab) -> None:
    mountpoint = lab.allowed / "all"
    mountpoint.mkdir()
    try:
        mount = lab.stub.Mount(pb.MountRequest(mountpoint=str(mountpoint)), metadata=AUTH)
        assert not mount.HasField("point") and mount.repository == lab.service.repo_url
        assert _is_mounted(mountpoint)
        assert os.listdir(mountpoint)  # the repository's volumes
        lab.stub.Unmount(pb.UnmountRequest(mountpoint=str(mountpoint)), metadata=AUTH)
        assert not _is_mounted(mountpoint)
        assert list(lab.stub.ListMounts(pb.ListMountsRequest(), metadata=AUTH).mounts) == []
        error = _refused(lab.stub.Unmount, pb.UnmountRequest(mountpoint=str(mountpoint)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == f"{mountpoint} is not mounted"
    finally:
        _force_unmount(mountpoint)
