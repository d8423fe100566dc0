"""Hostile clients against a real `lamina serve`: path escapes, stream floods, oversized input.

Every test here starts `lamina serve` as a process, exactly as a user does, and calls it
over loopback with the generated stubs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.backend.api.server import MAX_STREAMS, MAX_STREAMS_PER_CLIENT
from lamina.backend.engine import locks
from lamina.backend.service import JobState, Service, init_repository
from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc
from tests.support.api_server import AUTH, MiB, ServeProcess, lamina_serve
from tests.support.ext4_trees import make_source_tree, mkfs_ext4
from tests.support.volumes import make_volume, sha256_file

FINISHED = (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED)


@dataclass(frozen=True)
class Served:
    url: str
    allowed: Path  # the server's only --allow-path folder
    outside: Path  # a folder next to it that requests must never reach
    server: ServeProcess
    raw_point: str
    files_point: str
    raw_image: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hardening")
    url = str(root / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url)
    allowed = root / "allowed"
    outside = root / "outside"
    allowed.mkdir()
    outside.mkdir()
    raw_image = make_volume(allowed / "raw.img", 4 * MiB, seed=70)
    raw = service.start_backup(str(raw_image), "hard/raw")
    ext4 = service.start_backup(
        str(mkfs_ext4(make_source_tree(root / "tree"), root / "ext4.img", 16 * MiB)), "hard/ext4"
    )
    for job in (raw, ext4):
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    with lamina_serve(url, root / "token", "--allow-path", str(allowed)) as server:
        yield Served(url, allowed, outside, server, raw.result.id, ext4.result.id, raw_image)


@contextmanager
def stub_for(address: str, *, own_connection: bool = False) -> Iterator[pb_grpc.LaminaServiceStub]:
    # A channel of its own (not a shared subchannel): the server sees another client.
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    channel = grpc.insecure_channel(address, options=options)
    try:
        yield pb_grpc.LaminaServiceStub(channel)
    finally:
        channel.close()


@pytest.fixture
def stub(served: Served) -> Iterator[pb_grpc.LaminaServiceStub]:
    with stub_for(served.server.address) as s:
        yield s


@contextmanager
def repository_held(url: str) -> Iterator[None]:
    """An exclusive lock on the repository (as a prune holds it) until the block ends."""
    holder = Service(url)
    lock = locks.acquire(holder.repo, locks.EXCLUSIVE, "held by the test")
    assert lock is not None
    try:
        yield
    finally:
        lock.release()
        holder.close()


def task_log(stub: pb_grpc.LaminaServiceStub, task_id: str) -> list[str]:
    return list(stub.GetTask(pb.GetTaskRequest(id=task_id, include_log=True), metadata=AUTH).log)


def wait_until_locking(stub: pb_grpc.LaminaServiceStub, task_id: str) -> None:
    """The task waits for its repository lock: its log says so (watched, not slept on)."""
    call = stub.WatchTask(pb.WatchTaskRequest(id=task_id, include_log=True), metadata=AUTH)
    try:
        for task in call:
            if any(line.endswith("locking") for line in task.log):
                return
            assert task.state not in FINISHED, task.error
    finally:
        call.cancel()
    raise AssertionError("the task ended without waiting for a lock")


def finish(stub: pb_grpc.LaminaServiceStub, task_id: str) -> pb.Task:
    final = list(stub.WatchTask(pb.WatchTaskRequest(id=task_id), metadata=AUTH))[-1]
    assert final.state in FINISHED
    return final


def leftovers(*folders: Path) -> list[Path]:
    return [
        p for folder in folders for p in folder.rglob("*") if p.name.endswith(".lamina-partial")
    ]


# ---------------------------------------------------------------------------- --allow-path


def test_restore_does_not_follow_a_symlink_planted_while_it_waits_for_the_lock(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    sub = served.allowed / "restore-sub"
    sub.mkdir()
    target = sub / "disk.img"
    with repository_held(served.url):
        task = stub.StartRestore(
            pb.StartRestoreRequest(point=served.raw_point, target=str(target)), metadata=AUTH
        )
        wait_until_locking(stub, task.id)
        # The attack: the checked folder becomes a symlink to a folder outside.
        sub.rename(served.allowed / "restore-sub-checked")
        sub.symlink_to(served.outside)
    final = finish(stub, task.id)
    assert final.state == pb.TASK_STATE_FAILED, final.summary
    assert final.error == f"{sub} is a symlink; it is not followed under --allow-path"
    assert list(served.outside.iterdir()) == []
    assert leftovers(served.allowed, served.outside) == []


def test_extract_does_not_follow_a_symlink_planted_while_it_waits_for_the_lock(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    sub = served.allowed / "extract-sub"
    sub.mkdir()
    with repository_held(served.url):
        task = stub.StartExtract(
            pb.StartExtractRequest(
                point=served.files_point,
                paths=[pb.FilePath(text="/etc")],
                target=str(sub / "out"),
            ),
            metadata=AUTH,
        )
        sub.rename(served.allowed / "extract-sub-checked")
        sub.symlink_to(served.outside)
    final = finish(stub, task.id)
    assert final.state == pb.TASK_STATE_FAILED, final.summary
    assert final.error == f"{sub} is a symlink; it is not followed under --allow-path"
    assert list(served.outside.iterdir()) == []


def test_restore_to_a_symlink_target_replaces_nothing_outside(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    precious = served.outside / "precious.img"
    precious.write_bytes(b"precious")
    link = served.allowed / "link.img"
    link.symlink_to(precious)
    for overwrite in (False, True):
        with pytest.raises(grpc.RpcError) as refused:
            stub.StartRestore(
                pb.StartRestoreRequest(
                    point=served.raw_point, target=str(link), overwrite=overwrite
                ),
                metadata=AUTH,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # resolved: outside
    assert precious.read_bytes() == b"precious"
    precious.unlink()
    link.unlink()


def test_restore_inside_the_allowed_folder_still_works(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    target = served.allowed / "fine" / "disk.img"
    target.parent.mkdir()
    task = stub.StartRestore(
        pb.StartRestoreRequest(point=served.raw_point, target=str(target)), metadata=AUTH
    )
    final = finish(stub, task.id)
    assert final.state == pb.TASK_STATE_SUCCEEDED, final.error
    assert sha256_file(target) == sha256_file(served.raw_image)
    assert leftovers(served.allowed) == []


# ---------------------------------------------------------------------------- cancel


def test_a_task_cancelled_while_waiting_for_the_lock_ends_cancelled(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    target = served.allowed / "cancelled.img"
    with repository_held(served.url):
        task = stub.StartRestore(
            pb.StartRestoreRequest(point=served.raw_point, target=str(target)), metadata=AUTH
        )
        wait_until_locking(stub, task.id)
        stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=AUTH)
        final = finish(stub, task.id)
    assert final.state == pb.TASK_STATE_CANCELLED, final.error
    assert "cancelled while waiting for the lock" in final.error
    assert not target.exists() and leftovers(served.allowed) == []


# ---------------------------------------------------------------------------- streams


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        healthy: Any = health_pb2_grpc.HealthStub(channel)  # stubs lack the methods
        answer = healthy.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(answer.status)


def test_many_open_streams_never_starve_health_or_unary_calls(served: Served) -> None:
    address = served.server.address
    target = served.allowed / "watched.img"
    opened: list[Any] = []
    refused: list[grpc.RpcError] = []
    with ExitStack() as stack, repository_held(served.url):
        first = stack.enter_context(stub_for(address))
        task = first.StartRestore(
            pb.StartRestoreRequest(point=served.raw_point, target=str(target)), metadata=AUTH
        )
        wait_until_locking(first, task.id)

        def watch(stub: pb_grpc.LaminaServiceStub) -> None:
            call = stub.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=AUTH)
            try:
                next(call)  # the first message: the stream is open on the server
                opened.append(call)
            except grpc.RpcError as e:
                refused.append(e)

        # one client opens 20: the 17th and later are refused, the client's other calls work
        per_client, total = MAX_STREAMS_PER_CLIENT, MAX_STREAMS
        assert total % per_client == 0 and total >= 64
        for _ in range(per_client + 4):
            watch(first)
        assert len(opened) == per_client and len(refused) == 4
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert f"this client has {per_client} streams open" in (refused[0].details() or "")
        assert first.GetTask(pb.GetTaskRequest(id=task.id), metadata=AUTH).id == task.id
        # more clients fill the server's streams; the next client's stream is refused
        for _ in range(total // per_client - 1):
            other = stack.enter_context(stub_for(address, own_connection=True))
            for _ in range(per_client):
                watch(other)
        assert (len(opened), len(refused)) == (total, 4), [e.details() for e in refused]
        late = stack.enter_context(stub_for(address, own_connection=True))
        watch(late)
        assert len(refused) == 5
        assert f"the server has {total} streams open" in (refused[-1].details() or "")
        # with every stream taken, health checks and unary calls are still answered
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING
        points = late.ListPoints(pb.ListPointsRequest(), metadata=AUTH).points
        assert served.raw_point in [p.id for p in points]
        assert late.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).version
        # a closed stream frees its slot
        opened.pop().cancel()
        tries = 0
        while True:  # the server frees the slot once it has seen the cancel
            before = len(opened)
            watch(late)
            if len(opened) > before:
                break
            tries += 1
            assert tries < 500, "a cancelled stream never freed its slot"
        late.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=AUTH)
        # every open stream sees the task to its end
        assert list(opened[0])[-1].state == pb.TASK_STATE_CANCELLED
        assert list(opened[-1])[-1].state == pb.TASK_STATE_CANCELLED
        for call in opened:
            call.cancel()


# ---------------------------------------------------------------------------- input limits


BIG = "x" * (1024 * 1024)
NUL = "bad\0name"


def _hostile_requests(served: Served) -> list[tuple[str, Any]]:
    point = served.raw_point
    folder = str(served.allowed)
    cases: list[tuple[str, Any]] = []
    for bad in (BIG, NUL):
        cases += [
            ("StartBackup", pb.StartBackupRequest(source=str(served.raw_image), volume=bad)),
            (
                "StartBackup",
                pb.StartBackupRequest(source=str(served.raw_image), volume=f"ns/{bad}"),
            ),
            (
                "StartBackup",
                pb.StartBackupRequest(
                    source=str(served.raw_image), volume="v", snapshot_handle=bad
                ),
            ),
            (
                "StartBackup",
                pb.StartBackupRequest(source=str(served.raw_image), volume="v", labels={"k": bad}),
            ),
            (
                "StartBackup",
                pb.StartBackupRequest(source=str(served.raw_image), volume="v", labels={bad: "v"}),
            ),
            (
                "StartBackup",
                pb.StartBackupRequest(source=str(served.raw_image), volume="v", parent=bad),
            ),
            (
                "StartVolumeBackup",
                pb.StartVolumeBackupRequest(cluster="local", namespace="n", name=bad),
            ),
            (
                "StartVolumeBackup",
                pb.StartVolumeBackupRequest(cluster="local", namespace=bad, name="n"),
            ),
            ("SetProtection", pb.SetProtectionRequest(point=point, protected=True, note=bad)),
            ("SetProtection", pb.SetProtectionRequest(point=bad, protected=True)),
            ("GetPoint", pb.GetPointRequest(point=bad)),
            ("GetChain", pb.GetChainRequest(point=bad)),
            ("ListPoints", pb.ListPointsRequest(volume=bad)),
            ("StartRestore", pb.StartRestoreRequest(point=bad, target=f"{folder}/r.img")),
            ("StartRestore", pb.StartRestoreRequest(point=point, target=f"{folder}/{bad}")),
            ("StartVerify", pb.StartVerifyRequest(point=bad)),
            ("StartDelete", pb.StartDeleteRequest(point=bad)),
            ("StartConsolidate", pb.StartConsolidateRequest(point=bad)),
            ("StartConsolidate", pb.StartConsolidateRequest(point=point, until=bad)),
            ("StartForget", pb.StartForgetRequest(keep_last=1, volume=bad)),
            ("StartForget", pb.StartForgetRequest(keep_within=bad)),
            (
                "StartExtract",
                pb.StartExtractRequest(point=bad, paths=[pb.FilePath(text="/")], target=folder),
            ),
            (
                "StartExtract",
                pb.StartExtractRequest(
                    point=point, paths=[pb.FilePath(text="/")], target=f"{folder}/{bad}"
                ),
            ),
            ("ListClusterVolumes", pb.ListClusterVolumesRequest(cluster=bad)),
            ("ListClusterVolumes", pb.ListClusterVolumesRequest(cluster="local", namespace=bad)),
            ("CheckClusters", pb.CheckClustersRequest(names=[bad])),
            ("ListFiles", pb.ListFilesRequest(point=bad)),
            ("Mount", pb.MountRequest(point=bad, mountpoint=f"{folder}/m")),
        ]
    cases += [
        ("StartForget", pb.StartForgetRequest(keep_within="99999999999y")),
        ("StartForget", pb.StartForgetRequest(keep_within="999999999999999999999999999d")),
        ("GetPoint", pb.GetPointRequest(point="../../config")),
        ("GetPoint", pb.GetPointRequest(point="0123456789abcdef/../../x")),
    ]
    return cases


def test_hostile_input_is_invalid_argument_in_one_short_line(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    for method, request in _hostile_requests(served):
        with pytest.raises(grpc.RpcError) as failed:
            getattr(stub, method)(request, metadata=AUTH)
        error = failed.value
        details = error.details() or ""
        shown = (method, str(request)[:120])
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (shown, error.code(), details)
        assert len(details) < 400 and "\n" not in details, (shown, details[:200])
    # nothing of it was stored: no new volume, the point is not protected
    points = stub.ListPoints(pb.ListPointsRequest(), metadata=AUTH).points
    assert {p.volume.name for p in points} == {"raw", "ext4"}
    assert not [p for p in points if p.protected]
    assert "internal error" not in served.server.log.text
    assert "Traceback" not in served.server.log.text


def test_hostile_task_ids_and_file_paths_are_answered_briefly(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    for method, request in (
        ("GetTask", pb.GetTaskRequest(id=BIG)),
        ("CancelTask", pb.CancelTaskRequest(id=NUL)),
        ("ListFiles", pb.ListFilesRequest(point=served.files_point, path=pb.FilePath(text=BIG))),
        ("ListFiles", pb.ListFilesRequest(point=served.files_point, path=pb.FilePath(text=NUL))),
    ):
        with pytest.raises(grpc.RpcError) as failed:
            getattr(stub, method)(request, metadata=AUTH)
        assert failed.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), (method, (failed.value.details() or "")[:200])
        assert len(failed.value.details() or "") <= 1000


def test_the_protection_marker_is_json_whatever_the_note(
    served: Served, stub: pb_grpc.LaminaServiceStub
) -> None:
    note = 'kept for the "audit" \\ it\'s\tdue 2027'
    stub.SetProtection(
        pb.SetProtectionRequest(point=served.raw_point, protected=True, note=note), metadata=AUTH
    )
    try:
        marker = json.loads(Path(served.url, "protected", served.raw_point).read_bytes())
        assert marker["note"] == note and marker["point"] == served.raw_point
    finally:
        stub.SetProtection(
            pb.SetProtectionRequest(point=served.raw_point, protected=False), metadata=AUTH
        )
    assert not os.path.exists(Path(served.url, "protected", served.raw_point))
