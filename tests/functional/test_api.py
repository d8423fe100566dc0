"""The lamina.v1 API on real servers on loopback, called through the generated stubs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lamina.backend.errors import PasswordRequired, PointNotFound, StorageUnavailable, WrongPassword
from lamina.backend.service import BackupCaps, JobState, Service, init_repository
from lamina.backend.service.remote import ApiClient
from lamina.backend.service.rpc_errors import ApiError
from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc
from tests.support.api_server import (
    AUTH,
    TOKEN,
    MiB,
    running_server,
    slow_image,
    slow_repository,
    stub_for,
)
from tests.support.volumes import make_volume, scribble, sha256_file, sparse_copy

FINISHED = (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED)


@dataclass(frozen=True)
class Servers:
    root: Path  # the only folder the servers let requests name
    fast: str  # address of a server over a quick repository
    slow: str  # address of a server over a zstd-19 repository: backups take seconds
    raw_point: str  # a point of the fast repository whose volume has no filesystem


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("api")
    fast_url = str(root / "repo")
    init_repository(fast_url, grid_size=256 * 1024)
    fast_service = Service(fast_url)
    raw = make_volume(root / "raw.img", 4 * MiB, seed=1)
    job = fast_service.start_backup(str(raw), "fixtures/raw")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    slow_service = Service(slow_repository(root / "slow"))
    allowed = [str(root)]
    with (
        running_server(fast_service, allowed_paths=allowed) as fast,
        running_server(
            slow_service,
            backup_caps=BackupCaps(max_backups=2, max_backups_per_volume=1),
            allowed_paths=allowed,
        ) as slow,
    ):
        yield Servers(root, fast.address, slow.address, job.result.id)


@pytest.fixture
def fast(servers: Servers) -> Iterator[pb_grpc.LaminaServiceStub]:
    with stub_for(servers.fast) as stub:
        yield stub


@pytest.fixture
def slow(servers: Servers) -> Iterator[pb_grpc.LaminaServiceStub]:
    with stub_for(servers.slow) as stub:
        yield stub


def watch(stub: pb_grpc.LaminaServiceStub, task_id: str, **kw: Any) -> list[pb.Task]:
    return list(stub.WatchTask(pb.WatchTaskRequest(id=task_id, **kw), metadata=AUTH))


def finish(stub: pb_grpc.LaminaServiceStub, task: pb.Task) -> pb.Task:
    final = watch(stub, task.id)[-1]
    assert final.state in FINISHED
    return final


def nanos(ts: Any) -> int:
    return int(ts.ToNanoseconds())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------------------- auth


def test_every_call_needs_the_right_bearer_token(
    servers: Servers, fast: pb_grpc.LaminaServiceStub
) -> None:
    request = pb.ListPointsRequest()
    for metadata, expected in (
        ((), "missing bearer token (authorization metadata)"),
        ((("authorization", "Bearer not-the-token"),), "invalid bearer token"),
        ((("authorization", TOKEN),), "invalid bearer token"),  # no scheme
        ((("authorization", f"Basic {TOKEN}"),), "invalid bearer token"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            fast.ListPoints(request, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == expected
    # streaming calls are refused the same way, before any work
    with pytest.raises(grpc.RpcError) as refused:
        list(fast.WatchTask(pb.WatchTaskRequest(id="x"), metadata=(("authorization", "Bearer x"),)))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    points = fast.ListPoints(request, metadata=AUTH).points
    assert servers.raw_point in [p.id for p in points]
    with ApiClient(servers.fast, token="wrong" * 5) as client, pytest.raises(ApiError) as typed:
        client.list_points()
    assert typed.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "refused the token" in str(typed.value)


# ---------------------------------------------------------------------------- backup, restore


def test_backup_watched_to_its_end_then_restored_byte_for_byte(
    servers: Servers, fast: pb_grpc.LaminaServiceStub, tmp_path: Path
) -> None:
    volume = make_volume(servers.root / "watched.img", 8 * MiB, seed=3)
    original = sparse_copy(volume, tmp_path / "original.img")
    started = fast.StartBackup(
        pb.StartBackupRequest(source=str(volume), volume="ns/watched"), metadata=AUTH
    )
    assert started.kind == "backup" and started.volume.name == "watched"
    updates = watch(fast, started.id, include_log=True)
    assert [u.state in FINISHED for u in updates].count(True) == 1
    final = updates[-1]
    assert final.state == pb.TASK_STATE_SUCCEEDED, final.error
    assert final.WhichOneof("result") == "backup" and final.point == final.backup.id
    assert final.backup.kind == "full" and final.backup.capacity == 8 * MiB
    assert final.progress.phase == "done" and final.HasField("finished")
    assert any("started" in line for line in final.log)
    first = final.backup

    point = fast.GetPoint(pb.GetPointRequest(point=first.id[:10]), metadata=AUTH)
    manifest = json.loads(point.manifest_json)
    assert manifest["volume"]["name"] == "watched"
    assert manifest["image_digest"] == point.image_digest == first.image_digest

    changed = scribble(volume, 3, 65536, seed=4)
    ranges = pb.ByteRanges(
        ranges=[pb.ByteRange(offset=o, length=n) for o, n in changed], origin="test ranges"
    )
    second = finish(
        fast,
        fast.StartBackup(
            pb.StartBackupRequest(source=str(volume), volume="ns/watched", changed_ranges=ranges),
            metadata=AUTH,
        ),
    ).backup
    assert second.kind == "incremental" and second.parent == first.id
    assert second.stats.bytes_read == 3 * 65536
    chain = fast.GetChain(pb.GetChainRequest(point=second.id), metadata=AUTH).points
    assert [p.id for p in chain] == [second.id, first.id]

    for point_id, expected in ((second.id, volume), (first.id, original)):
        target = servers.root / f"restored-{point_id}.img"
        restored = finish(
            fast,
            fast.StartRestore(
                pb.StartRestoreRequest(point=point_id, target=str(target)), metadata=AUTH
            ),
        )
        assert restored.state == pb.TASK_STATE_SUCCEEDED, restored.error
        assert restored.restore.bytes_written > 0 and restored.restore.target == str(target)
        assert sha256_file(target) == sha256_file(expected)

    # a second restore to the same file is refused, before any task, unless overwrite is asked
    with pytest.raises(grpc.RpcError) as refused:
        fast.StartRestore(pb.StartRestoreRequest(point=first.id, target=str(target)), metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exists; choose a new file" in (refused.value.details() or "")
    trailing: Any = refused.value.trailing_metadata()
    assert ("lamina-error-class", "TargetExists") in tuple(trailing)


def test_cancel_mid_backup_leaves_no_point(
    servers: Servers, slow: pb_grpc.LaminaServiceStub
) -> None:
    image = slow_image(servers.root / "cancel.img", 16 * MiB, seed=11)
    task = slow.StartBackup(
        pb.StartBackupRequest(source=str(image), volume="ns/cancel-me"), metadata=AUTH
    )
    stream = slow.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=AUTH)
    for update in stream:
        assert update.state not in FINISHED, "the backup ended before it could be cancelled"
        if update.progress.done > 0:
            break
    stream.cancel()  # this watcher leaves; the task goes on
    answer = slow.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=AUTH)
    assert answer.state in (pb.TASK_STATE_CANCELLING, pb.TASK_STATE_CANCELLED)
    final = finish(slow, task)
    assert final.state == pb.TASK_STATE_CANCELLED
    assert "cancel" in final.error and final.WhichOneof("result") is None
    points = slow.ListPoints(pb.ListPointsRequest(volume="ns/cancel-me"), metadata=AUTH).points
    assert list(points) == []
    check = finish(slow, slow.StartVerify(pb.StartVerifyRequest(), metadata=AUTH))
    assert check.state == pb.TASK_STATE_SUCCEEDED and check.verify.ok, check.verify.problems
    # cancelling a finished task changes nothing
    assert slow.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=AUTH).state == final.state


def test_two_watchers_one_joining_late_see_the_same_end(
    servers: Servers, slow: pb_grpc.LaminaServiceStub
) -> None:
    image = slow_image(servers.root / "watched-twice.img", 8 * MiB, seed=12)
    task = slow.StartBackup(
        pb.StartBackupRequest(source=str(image), volume="ns/watched-twice"), metadata=AUTH
    )
    early: list[pb.Task] = []

    def watch_from_the_start() -> None:
        for update in slow.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=AUTH):
            early.append(update)

    watcher = threading.Thread(target=watch_from_the_start)
    watcher.start()
    wait_for(lambda: len(early) >= 3 and early[-1].progress.done > 0, "progress")
    read_before_joining = early[-1].progress.read  # bytes read: never reset by a phase
    late = watch(slow, task.id)
    watcher.join(timeout=30)
    # the late watcher starts from the state the task is in now, not from its beginning
    assert late[0].state == pb.TASK_STATE_RUNNING
    assert late[0].progress.read >= read_before_joining > 0
    assert len(late) < len(early)
    for updates in (early, late):
        assert updates[-1].state == pb.TASK_STATE_SUCCEEDED, updates[-1].error
        assert updates[-1].backup.id == early[-1].backup.id
        assert all(u.state not in FINISHED for u in updates[:-1])


def test_backup_limits_queue_the_rest_visibly(
    servers: Servers, slow: pb_grpc.LaminaServiceStub
) -> None:
    def start(name: str, volume: str, seed: int) -> pb.Task:
        image = slow_image(servers.root / f"limit-{name}.img", 2 * MiB, seed=seed)
        return slow.StartBackup(
            pb.StartBackupRequest(source=str(image), volume=volume), metadata=AUTH
        )

    a = start("a", "limits/one", 21)
    b = start("b", "limits/one", 22)  # same volume as a: waits for it
    c = start("c", "limits/two", 23)
    d = start("d", "limits/three", 24)  # two backups run already: waits
    e = start("e", "limits/four", 25)
    assert a.state == pb.TASK_STATE_RUNNING and c.state == pb.TASK_STATE_RUNNING
    assert (b.state, b.queue_position) == (pb.TASK_STATE_QUEUED, 1)
    assert (d.state, d.queue_position) == (pb.TASK_STATE_QUEUED, 2)
    assert (e.state, e.queue_position) == (pb.TASK_STATE_QUEUED, 3)
    listed = {t.id: t for t in slow.ListTasks(pb.ListTasksRequest(), metadata=AUTH).tasks}
    assert [listed[t.id].queue_position for t in (a, b, c, d, e)] == [0, 1, 0, 2, 3]

    dropped = slow.CancelTask(pb.CancelTaskRequest(id=e.id), metadata=AUTH)
    assert dropped.state == pb.TASK_STATE_CANCELLED and not dropped.HasField("started")
    finals = {t.id: finish(slow, t) for t in (a, b, c, d)}
    assert all(f.state == pb.TASK_STATE_SUCCEEDED for f in finals.values())
    spans = {tid: (nanos(f.started), nanos(f.finished)) for tid, f in finals.items()}
    # one volume: never interleaved
    assert spans[b.id][0] >= spans[a.id][1]
    # never more than two at once, and two did run together
    events = sorted([(s, 1) for s, _ in spans.values()] + [(f, -1) for _, f in spans.values()])
    running, most = 0, 0
    for _, step in sorted(events, key=lambda ev: (ev[0], ev[1])):
        running += step
        most = max(most, running)
    assert most == 2
    assert slow.GetTask(pb.GetTaskRequest(id=e.id), metadata=AUTH).state == (
        pb.TASK_STATE_CANCELLED
    )


# ---------------------------------------------------------------------------- health, reflection


def test_health_and_reflection(servers: Servers) -> None:
    channel = grpc.insecure_channel(servers.fast)
    try:
        healthy: Any = health_pb2_grpc.HealthStub(channel)  # stubs lack the methods
        for name in ("", "lamina.v1.LaminaService"):
            answer = healthy.Check(health_pb2.HealthCheckRequest(service=name))  # no token
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)

        def ask(request: reflection_pb2.ServerReflectionRequest, **kw: Any) -> Any:
            return next(iter(reflect.ServerReflectionInfo(iter([request]), **kw)))

        with pytest.raises(grpc.RpcError) as refused:
            ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        listed = ask(reflection_pb2.ServerReflectionRequest(list_services=""), metadata=AUTH)
        names = {s.name for s in listed.list_services_response.service}
        assert names == {
            "lamina.v1.LaminaService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        found = ask(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="lamina.v1.LaminaService"
            ),
            metadata=AUTH,
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        api = next(f for f in files if f.package == "lamina.v1")
        methods = {m.name: m for m in api.service[0].method}
        assert {"WatchTask", "CancelTask", "StartBackup", "ReadTree"} <= set(methods)
        assert methods["WatchTask"].server_streaming
    finally:
        channel.close()


# ---------------------------------------------------------------------------- errors


def _code_cases(servers: Servers) -> list[tuple[str, Any, grpc.StatusCode, str]]:
    root = servers.root
    escape = root / "escape"
    if not escape.is_symlink():
        escape.symlink_to("/etc")
    existing = make_volume(root / "existing.img", 1 * MiB, seed=5)
    overlapping = pb.ByteRanges(
        ranges=[pb.ByteRange(offset=0, length=8192), pb.ByteRange(offset=4096, length=4096)]
    )
    S = grpc.StatusCode
    return [
        ("GetPoint", pb.GetPointRequest(), S.INVALID_ARGUMENT, "give the point"),
        ("GetPoint", pb.GetPointRequest(point="ffffffffff"), S.NOT_FOUND, "no restore point"),
        ("GetChain", pb.GetChainRequest(point="beef"), S.NOT_FOUND, "no restore point"),
        ("GetChain", pb.GetChainRequest(point="nope"), S.INVALID_ARGUMENT, "not a point id"),
        ("ListPoints", pb.ListPointsRequest(volume="a/b/c/d"), S.INVALID_ARGUMENT, "volume"),
        (
            "StartBackup",
            pb.StartBackupRequest(source="relative.img", volume="v"),
            S.INVALID_ARGUMENT,
            "absolute path",
        ),
        (
            "StartBackup",
            pb.StartBackupRequest(source=str(root / "missing.img"), volume="v"),
            S.NOT_FOUND,
            "does not exist",
        ),
        (
            "StartBackup",
            pb.StartBackupRequest(source="/etc/hostname", volume="v"),
            S.PERMISSION_DENIED,
            "outside the folders",
        ),
        (
            "StartBackup",
            pb.StartBackupRequest(source=str(existing), volume=""),
            S.INVALID_ARGUMENT,
            "volume",
        ),
        (
            "StartBackup",
            pb.StartBackupRequest(source=str(existing), volume="v", changed_ranges=overlapping),
            S.INVALID_ARGUMENT,
            "overlaps",
        ),
        (
            "StartRestore",
            pb.StartRestoreRequest(point=servers.raw_point, target="/etc/lamina-test.img"),
            S.PERMISSION_DENIED,
            "outside the folders",
        ),
        (
            "StartRestore",
            pb.StartRestoreRequest(point=servers.raw_point, target=str(escape / "x.img")),
            S.PERMISSION_DENIED,
            "outside the folders",
        ),
        (
            "StartRestore",
            pb.StartRestoreRequest(point="beef", target=str(root / "x.img")),
            S.NOT_FOUND,
            "no restore point",
        ),
        (
            "StartVolumeBackup",
            pb.StartVolumeBackupRequest(cluster="", namespace="ns", name="v"),
            S.INVALID_ARGUMENT,
            "cluster",
        ),
        (
            "StartVolumeBackup",
            pb.StartVolumeBackupRequest(cluster="far-away", namespace="ns", name="v"),
            S.INVALID_ARGUMENT,
            "data-mover",
        ),
        ("GetTask", pb.GetTaskRequest(id="nope"), S.NOT_FOUND, "no task"),
        ("CancelTask", pb.CancelTaskRequest(id="nope"), S.NOT_FOUND, "no task"),
        ("WatchTask", pb.WatchTaskRequest(id="nope"), S.NOT_FOUND, "no task"),
        (
            "ListFiles",
            pb.ListFilesRequest(point=servers.raw_point),
            S.FAILED_PRECONDITION,
            "filesystem",
        ),
        (
            "ListFiles",
            pb.ListFilesRequest(point=servers.raw_point, path=pb.FilePath(text="/a/../b")),
            S.INVALID_ARGUMENT,
            "'..'",
        ),
        (
            "ReadFile",
            pb.ReadFileRequest(point=servers.raw_point, path=pb.FilePath(text="/x"), offset=-1),
            S.INVALID_ARGUMENT,
            "negative",
        ),
        (
            "ReadTree",
            pb.ReadTreeRequest(point=servers.raw_point),
            S.FAILED_PRECONDITION,
            "filesystem",
        ),
        (
            "CheckClusters",
            pb.CheckClustersRequest(timeout_seconds=999),
            S.INVALID_ARGUMENT,
            "timeout",
        ),
    ]


def test_bad_requests_get_the_right_status_code_and_one_line(
    servers: Servers, fast: pb_grpc.LaminaServiceStub
) -> None:
    for method, request, code, fragment in _code_cases(servers):
        call = getattr(fast, method)
        with pytest.raises(grpc.RpcError) as failed:
            answer = call(request, metadata=AUTH)
            if method in ("WatchTask", "ReadFile", "ReadTree"):
                list(answer)
        error = failed.value
        details = error.details() or ""
        assert (method, error.code()) == (method, code), details
        assert fragment in details, (method, details)
        assert "\n" not in details and "Traceback" not in details
    # the typed client raises the server's own error class
    with ApiClient(servers.fast, token=TOKEN) as client, pytest.raises(PointNotFound):
        client.get_point("ffffffffff")


def test_repository_problems_map_to_status_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "locked")
    init_repository(url, password=b"right password")
    cases: list[tuple[Service, grpc.StatusCode, type[Exception]]] = [
        (Service(url), grpc.StatusCode.FAILED_PRECONDITION, PasswordRequired),
        (Service(url, password=b"wrong"), grpc.StatusCode.FAILED_PRECONDITION, WrongPassword),
    ]
    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: nothing listens
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    cases.append((Service("s3://bucket/repo"), grpc.StatusCode.UNAVAILABLE, StorageUnavailable))
    for service, code, error_class in cases:
        with running_server(service) as server:
            with stub_for(server.address) as stub, pytest.raises(grpc.RpcError) as failed:
                stub.ListPoints(pb.ListPointsRequest(), metadata=AUTH)
            assert failed.value.code() == code, failed.value.details()
            with ApiClient(server.address, token=TOKEN) as client, pytest.raises(error_class):
                client.list_points()


def test_insecure_no_auth_only_on_loopback(tmp_path: Path) -> None:
    from lamina.backend.api.server import ApiServer, ServeError, ServerOptions
    from lamina.backend.errors import UsageError

    url = str(tmp_path / "repo")
    init_repository(url)
    service = Service(url)
    for listen in ("0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.com:0"):
        with pytest.raises(UsageError, match="only allowed on a loopback address"):
            ApiServer(service, ServerOptions(listen=listen, token=None))
    with running_server(service, token=None) as server, stub_for(server.address) as stub:
        assert list(stub.ListPoints(pb.ListPointsRequest()).points) == []
        # the port is taken: a second server says so instead of sharing it
        busy = f"cannot listen on {server.address}: the address is in use"
        with pytest.raises(ServeError, match=busy):
            ApiServer(service, ServerOptions(listen=server.address, token=None))
