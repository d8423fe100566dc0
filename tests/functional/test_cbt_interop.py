"""Wire compatibility and the real `lamina cbt ...` processes.

An independent client and an independent minimal server are built here from a proto written
from the published API facts (not lamina's file), compiled with grpc_tools into a temp
folder, and run as separate processes that never import lamina. They talk to `lamina cbt
serve` and to lamina's client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lamina.backend.cbt import SnapshotMetadataClient
from lamina.backend.cbt.server import start_server
from lamina.backend.local import LocalCluster, LocalSnapshot
from tests.support.volumes import make_volume, scribble

MiB = 1024 * 1024
BLOCK = 4096
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]

API_PROTO = """
syntax = "proto3";
package snapshotmetadata;

service SnapshotMetadata {
  rpc GetMetadataAllocated(GetMetadataAllocatedRequest) returns (stream GetMetadataAllocatedResponse) {}
  rpc GetMetadataDelta(GetMetadataDeltaRequest) returns (stream GetMetadataDeltaResponse) {}
}
enum BlockMetadataType { UNKNOWN = 0; FIXED_LENGTH = 1; VARIABLE_LENGTH = 2; }
message BlockMetadata { int64 byte_offset = 1; int64 size_bytes = 2; }
message GetMetadataAllocatedRequest {
  string security_token = 1; string namespace = 2; string snapshot_name = 3;
  int64 starting_offset = 4; int32 max_results = 5;
}
message GetMetadataAllocatedResponse {
  BlockMetadataType block_metadata_type = 1; int64 volume_capacity_bytes = 2;
  repeated BlockMetadata block_metadata = 3;
}
message GetMetadataDeltaRequest {
  string security_token = 1; string namespace = 2; string base_snapshot_id = 3;
  string target_snapshot_name = 4; int64 starting_offset = 5; int32 max_results = 6;
}
message GetMetadataDeltaResponse {
  BlockMetadataType block_metadata_type = 1; int64 volume_capacity_bytes = 2;
  repeated BlockMetadata block_metadata = 3;
}
"""

INDEPENDENT_CLIENT = """
import json, sys
import grpc
import csi_cbt_pb2 as m
import csi_cbt_pb2_grpc as s

address, call, token, namespace = sys.argv[1:5]
stub = s.SnapshotMetadataStub(grpc.insecure_channel(address))
if call == "allocated":
    responses = stub.GetMetadataAllocated(m.GetMetadataAllocatedRequest(
        security_token=token, namespace=namespace, snapshot_name=sys.argv[5], max_results=3))
else:
    responses = stub.GetMetadataDelta(m.GetMetadataDeltaRequest(
        security_token=token, namespace=namespace, base_snapshot_id=sys.argv[5],
        target_snapshot_name=sys.argv[6]))
out = {"messages": [], "error": None}
try:
    for r in responses:
        out["messages"].append({
            "type": m.BlockMetadataType.Name(r.block_metadata_type),
            "capacity": r.volume_capacity_bytes,
            "tuples": [[b.byte_offset, b.size_bytes] for b in r.block_metadata],
        })
except grpc.RpcError as e:
    out["error"] = e.code().name
print(json.dumps(out))
"""

INDEPENDENT_SERVER = """
import json, sys
from concurrent import futures
import grpc
import csi_cbt_pb2 as m
import csi_cbt_pb2_grpc as s

spec = json.load(open(sys.argv[1]))

class Server(s.SnapshotMetadataServicer):
    def _messages(self, cls, request):
        assert request.security_token == spec["token"], "token not sent"
        tuples = [t for t in spec["tuples"] if t[0] + t[1] > request.starting_offset]
        size = request.max_results or 2
        for i in range(0, len(tuples), size):
            r = cls(block_metadata_type=m.VARIABLE_LENGTH, volume_capacity_bytes=spec["capacity"])
            for offset, length in tuples[i:i + size]:
                r.block_metadata.add(byte_offset=offset, size_bytes=length)
            yield r

    def GetMetadataAllocated(self, request, context):
        assert request.snapshot_name == "snap-b"
        yield from self._messages(m.GetMetadataAllocatedResponse, request)

    def GetMetadataDelta(self, request, context):
        assert (request.base_snapshot_id, request.target_snapshot_name) == ("handle-a", "snap-b")
        yield from self._messages(m.GetMetadataDeltaResponse, request)

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
s.add_SnapshotMetadataServicer_to_server(Server(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()  # serve until the test closes stdin
server.stop(0)
"""


@pytest.fixture(scope="module")
def independent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the independent proto compiled, and the client and server scripts."""
    folder = tmp_path_factory.mktemp("independent")
    (folder / "csi_cbt.proto").write_text(API_PROTO)
    compiled = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(folder / "csi_cbt.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stderr
    (folder / "client.py").write_text(textwrap.dedent(INDEPENDENT_CLIENT))
    (folder / "server.py").write_text(textwrap.dedent(INDEPENDENT_SERVER))
    return folder


def independent_env(folder: Path) -> dict[str, str]:
    """Run with -S: no site processing, so lamina's editable install is not importable; only
    the compiled proto and the site-packages folder holding grpc and protobuf are."""
    import grpc

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{folder}{os.pathsep}{Path(grpc.__file__).parents[1]}"
    return env


def run_independent_client(folder: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-S", str(folder / "client.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=independent_env(folder),
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    return output


def blocks(tuples: list[list[int]] | list[tuple[int, int]]) -> list[int]:
    return [o // BLOCK for offset, n in tuples for o in range(offset, offset + n, BLOCK)]


@dataclass
class Snapshots:
    root: Path
    a: LocalSnapshot
    b: LocalSnapshot
    changed: list[int]
    allocated: list[int]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Snapshots:
    tmp = tmp_path_factory.mktemp("interop")
    volume = make_volume(tmp / "vol.img", 4 * MiB, seed=11, extents=6)
    cluster = LocalCluster(tmp / "cluster")
    a = cluster.create_snapshot(str(volume), "team", "snap-a")
    changed = scribble(volume, 5, BLOCK, seed=12)
    b = cluster.create_snapshot(str(volume), "team", "snap-b")
    data = b.image.read_bytes()
    allocated = [i // BLOCK for i in range(0, len(data), BLOCK) if data[i : i + BLOCK].strip(b"\0")]
    old = a.image.read_bytes()
    really_changed = [o // BLOCK for o, _ in changed if old[o : o + BLOCK] != data[o : o + BLOCK]]
    return Snapshots(tmp / "cluster", a, b, really_changed, allocated)


def test_independent_client_talks_to_lamina_server(independent: Path, snapshots: Snapshots) -> None:
    with start_server(snapshots.root, token="tk", block_type="variable") as server:
        allocated = run_independent_client(
            independent, server.address, "allocated", "tk", "team", "snap-b"
        )
        messages = allocated["messages"]
        assert allocated["error"] is None and messages
        assert {m["type"] for m in messages} == {"VARIABLE_LENGTH"}
        assert {m["capacity"] for m in messages} == {4 * MiB}
        assert all(len(m["tuples"]) <= 3 for m in messages)
        assert blocks([t for m in messages for t in m["tuples"]]) == snapshots.allocated
        delta = run_independent_client(
            independent, server.address, "delta", "tk", "team", snapshots.a.handle, "snap-b"
        )
        assert delta["error"] is None
        assert blocks([t for m in delta["messages"] for t in m["tuples"]]) == snapshots.changed
        refused = run_independent_client(
            independent, server.address, "delta", "bad", "team", snapshots.a.handle, "snap-b"
        )
        assert refused == {"messages": [], "error": "UNAUTHENTICATED"}


@contextlib.contextmanager
def independent_server(folder: Path, spec: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, "-S", str(folder / "server.py"), str(spec_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=independent_env(folder),
        cwd=folder,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield f"127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.stdin.close()
        process.wait(30)


def test_lamina_client_talks_to_independent_server(independent: Path, tmp_path: Path) -> None:
    tuples = [[0, 8192], [65536, 4096], [1 << 20, 1 << 20], [(4 << 20) - 4096, 4096]]
    spec = {"token": "tk2", "capacity": 4 << 20, "tuples": tuples}
    with independent_server(independent, spec, tmp_path) as address:
        client = SnapshotMetadataClient(address, token="tk2")
        delta = client.delta("ns", "handle-a", "snap-b")
        assert [list(e) for e in delta] == tuples
        assert delta.messages_received == 2 and delta.block_type == "VARIABLE_LENGTH"
        allocated = client.allocated("ns", "snap-b", starting_offset=70000, max_results=1)
        assert [list(e) for e in allocated] == tuples[2:]
        assert allocated.capacity == 4 << 20 and allocated.messages_received == 2
        client.close()


def test_validate_a_malformed_stream_from_the_command_line(
    independent: Path, tmp_path: Path
) -> None:
    spec = {"token": "t", "capacity": 1 << 20, "tuples": [[0, 8192], [4096, 4096]]}
    token = tmp_path / "token"
    token.write_text("t")
    with independent_server(independent, spec, tmp_path) as address:
        args = ["--address", address, "--namespace", "ns", "--token-file", str(token)]
        streamed = lamina("cbt", "allocated", *args, "--snapshot", "snap-b", "--max-results", "1")
        result = lamina(
            "cbt", "delta", *args, "--base-snapshot-id", "handle-a", "--snapshot", "snap-b"
        )
    # Rows are printed as messages arrive: the good first message is out before the bad one.
    assert streamed.returncode == 1
    assert [line.split()[3:] for line in streamed.stdout.splitlines()[2:]] == [["0", "8192"]]
    assert "overlaps the previous tuple" in streamed.stderr
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"lamina: error: GetMetadataDelta stream from {address}: tuple 4096+4096 overlaps the "
        "previous tuple (which ends at 8192)"
    ]


# --------------------------------------------------------------- `lamina cbt` as real processes


@pytest.fixture
def served(snapshots: Snapshots, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    token = tmp_path / "token"
    token.write_text("proc-token\n")
    process = subprocess.Popen(
        [
            *LAMINA,
            "cbt",
            "serve",
            "--root",
            str(snapshots.root),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(token),
            "--cut-streams-after",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("serving SnapshotMetadata on 127.0.0.1:"), line
    address = line.split()[3]
    try:
        yield address, token
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)


def test_cbt_commands_against_a_served_process(
    served: tuple[str, Path], snapshots: Snapshots, independent: Path
) -> None:
    address, token = served
    common = ["--address", address, "--namespace", "team", "--token-file", str(token)]
    result = lamina(
        "cbt",
        "delta",
        *common,
        "--base-snapshot-id",
        snapshots.a.handle,
        "--snapshot",
        "snap-b",
        "--max-results",
        "2",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "Record#",
        "VolCapBytes",
        "BlockMetadataType",
        "ByteOffset",
        "SizeBytes",
    ]
    rows = [line.split() for line in lines[2:]]
    assert {r[1] for r in rows} == {str(4 * MiB)} and {r[2] for r in rows} == {"FIXED_LENGTH"}
    assert blocks([(int(r[3]), int(r[4])) for r in rows]) == snapshots.changed
    # The server cuts every stream after 2 messages: the records keep counting across resumes.
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    result = lamina(
        "cbt", "allocated", *common, "--snapshot", "snap-b", "-o", "json", "--max-results", "50"
    )
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout)
    assert all(
        set(m) == {"block_metadata_type", "volume_capacity_bytes", "block_metadata"}
        for m in messages
    )
    assert all(len(m["block_metadata"]) <= 50 for m in messages)
    extents = [(b["byte_offset"], b["size_bytes"]) for m in messages for b in m["block_metadata"]]
    assert blocks(extents) == snapshots.allocated
    # The independent client reaches the same process too.
    # The independent client reaches the same process too; it does not resume the cut stream.
    seen = run_independent_client(independent, address, "allocated", "proc-token", "team", "snap-b")
    assert seen["error"] == "UNAVAILABLE" and len(seen["messages"]) == 2
    assert blocks([t for m in seen["messages"] for t in m["tuples"]]) == snapshots.allocated[:6]


@pytest.mark.parametrize(
    ("args", "message", "exit_code"),
    [
        (
            ["--base-snapshot-id", "no-such-handle", "--snapshot", "snap-b"],
            "not found: no snapshot with handle",
            1,
        ),
        (
            ["--base-snapshot-id", "x", "--snapshot", "snap-b", "--starting-offset", "-1"],
            "starting offset must not be negative",
            2,
        ),
    ],
)
def test_cbt_errors_are_one_line(
    served: tuple[str, Path], args: list[str], message: str, exit_code: int
) -> None:
    address, token = served
    result = lamina(
        "cbt",
        "delta",
        "--address",
        address,
        "--namespace",
        "team",
        "--token-file",
        str(token),
        *args,
    )
    assert result.returncode == exit_code
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("lamina: error: ")
    assert message in result.stderr


def test_a_wrong_token_file_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = served
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    result = lamina(
        "cbt",
        "allocated",
        "--address",
        address,
        "--namespace",
        "team",
        "--token-file",
        str(wrong),
        "--snapshot",
        "snap-b",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"lamina: error: SnapshotMetadata service at {address} refused the security token: "
        "invalid or missing security token"
    ]


def test_local_snapshot_commands(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol.img", 2 * MiB, seed=2, extents=3)
    root = tmp_path / "cluster"
    result = lamina(
        "local", "snapshot", "--root", str(root), "--namespace", "ns", str(volume), "s1"
    )
    assert result.returncode == 0, result.stderr
    handle = result.stdout.strip()
    listed = json.loads(lamina("local", "snapshots", "--root", str(root), "--json").stdout)
    assert [(s["namespace"], s["name"], s["handle"], s["size"]) for s in listed] == [
        ("ns", "s1", handle, 2 * MiB)
    ]
    table = lamina("local", "snapshots", "--root", str(root)).stdout
    assert handle in table and "s1" in table
    again = lamina("local", "snapshot", "--root", str(root), "--namespace", "ns", str(volume), "s1")
    assert again.returncode == 1
    assert again.stderr.strip() == f"lamina: error: snapshot ns/s1 already exists in {root}"
