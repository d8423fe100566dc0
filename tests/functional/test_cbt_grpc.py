"""lamina's SnapshotMetadata client against real gRPC servers on loopback.

The servers are `lamina cbt serve` in this process (over a local cluster of real snapshot
files) and a deliberately broken server that sends scripted, malformed streams.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lamina.backend.cbt import SnapshotMetadataClient, SnapshotMetadataError
from lamina.backend.cbt.server import RunningServer, start_server
from lamina.backend.errors import ChangedRangesError
from lamina.backend.local import LocalCluster, LocalSnapshot
from lamina.protos import snapshotmetadata_pb2 as pb
from lamina.protos import snapshotmetadata_pb2_grpc as pb_grpc
from tests.support.volumes import make_volume, scribble

MiB = 1024 * 1024
BLOCK = 4096
CAPACITY = 8 * MiB


def nonzero_blocks(data: bytes) -> list[int]:
    return [i // BLOCK for i in range(0, len(data), BLOCK) if data[i : i + BLOCK].strip(b"\0")]


def differing_blocks(a: bytes, b: bytes) -> list[int]:
    return [i // BLOCK for i in range(0, len(b), BLOCK) if a[i : i + BLOCK] != b[i : i + BLOCK]]


def blocks_of(extents: list[tuple[int, int]]) -> list[int]:
    return [o // BLOCK for offset, n in extents for o in range(offset, offset + n, BLOCK)]


@dataclass
class Cluster:
    root: Path
    first: LocalSnapshot
    second: LocalSnapshot
    unchanged: LocalSnapshot
    other_volume: LocalSnapshot


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    tmp = tmp_path_factory.mktemp("cbt")
    volume = make_volume(tmp / "vol.img", CAPACITY, seed=3, extents=10)
    local = LocalCluster(tmp / "cluster")
    first = local.create_snapshot(str(volume), "apps", "first")
    scribble(volume, 9, BLOCK, seed=5)
    scribble(volume, 2, 3 * BLOCK, seed=6)
    second = local.create_snapshot(str(volume), "apps", "second")
    unchanged = local.create_snapshot(str(volume), "apps", "unchanged")
    other = make_volume(tmp / "other.img", CAPACITY, seed=4)
    other_volume = local.create_snapshot(str(other), "apps", "other")
    return Cluster(tmp / "cluster", first, second, unchanged, other_volume)


@pytest.fixture(scope="module")
def server(cluster: Cluster) -> Iterator[RunningServer]:
    with start_server(cluster.root) as running:
        yield running


def client_for(server: RunningServer, **kw: object) -> SnapshotMetadataClient:
    return SnapshotMetadataClient(server.address, retry_delay=0.01, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- lamina's own server


@pytest.mark.parametrize("block_type", ["fixed", "variable"])
def test_allocated_and_delta_are_exactly_the_expected_blocks(
    cluster: Cluster, block_type: str
) -> None:
    first, second = cluster.first.image.read_bytes(), cluster.second.image.read_bytes()
    with start_server(cluster.root, block_type=block_type) as running:
        client = client_for(running)
        allocated = client.allocated("apps", "first")
        extents = list(allocated)
        assert blocks_of(extents) == nonzero_blocks(first)
        assert allocated.capacity == CAPACITY
        assert allocated.block_type == (
            "FIXED_LENGTH" if block_type == "fixed" else "VARIABLE_LENGTH"
        )
        delta = client.delta("apps", cluster.first.handle, "second")
        changed = list(delta)
        expected = differing_blocks(first, second)
        assert blocks_of(changed) == expected and len(expected) >= 9
        if block_type == "fixed":
            assert all(n == BLOCK for _, n in changed)
        else:  # adjacent blocks are merged: no two extents touch
            assert all(o1 + n1 < o2 for (o1, n1), (o2, _) in itertools.pairwise(changed))
            assert any(n > BLOCK for _, n in changed)
        client.close()


def test_max_results_limits_each_message(cluster: Cluster, server: RunningServer) -> None:
    client = client_for(server)
    expected = nonzero_blocks(cluster.first.image.read_bytes())
    for max_results in (1, 7, 0):
        stream = client.allocated("apps", "first", max_results=max_results)
        sizes = [len(m.extents) for m in stream.messages()]
        limit = max_results or 256
        assert all(0 < s <= limit for s in sizes)
        assert sum(sizes) == len(expected)
        assert len(sizes) == -(-len(expected) // limit)


def test_starting_offset_skips_tuples_that_end_before_it(
    cluster: Cluster, server: RunningServer
) -> None:
    client = client_for(server)
    everything = list(client.allocated("apps", "first"))
    middle = everything[len(everything) // 2][0] + 100  # inside a block
    later = list(client.allocated("apps", "first", starting_offset=middle))
    assert later == [e for e in everything if e[0] + e[1] > middle]
    assert later[0][0] < middle < later[0][0] + later[0][1]


def test_cut_streams_resume_from_the_last_tuple(cluster: Cluster) -> None:
    with start_server(cluster.root, cut_after_messages=2) as running:
        client = client_for(running)
        stream = client.delta("apps", cluster.first.handle, "second", max_results=2)
        changed = list(stream)
        expected = differing_blocks(
            cluster.first.image.read_bytes(), cluster.second.image.read_bytes()
        )
        assert blocks_of(changed) == expected
        assert stream.resumes >= 2 and running.settings.streams_cut == stream.resumes
        allocated = client.allocated("apps", "first", max_results=5)
        assert blocks_of(list(allocated)) == nonzero_blocks(cluster.first.image.read_bytes())
        assert allocated.resumes > 0


def test_a_delta_without_changes_sends_nothing_and_takes_the_capacity_hint(
    cluster: Cluster, server: RunningServer
) -> None:
    client = client_for(server)
    stream = client.delta("apps", cluster.second.handle, "unchanged", capacity_hint=CAPACITY)
    assert list(stream.messages()) == []
    assert stream.capacity == CAPACITY and stream.block_type is None


def test_server_errors_become_one_line_errors(cluster: Cluster, server: RunningServer) -> None:
    client = client_for(server)
    with pytest.raises(SnapshotMetadataError, match="not found: no snapshot apps/missing"):
        list(client.allocated("apps", "missing"))
    with pytest.raises(SnapshotMetadataError, match="not found: no snapshot with handle"):
        list(client.delta("apps", "0000-no-such-handle", "second"))
    with pytest.raises(SnapshotMetadataError, match="different volumes"):
        list(client.delta("apps", cluster.other_volume.handle, "second"))
    with pytest.raises(SnapshotMetadataError, match="not below the volume capacity"):
        list(client.allocated("apps", "first", starting_offset=CAPACITY))
    with pytest.raises(SnapshotMetadataError, match="rejected the GetMetadataAllocated request"):
        list(client.allocated("", "first"))


def test_security_token_is_checked(cluster: Cluster) -> None:
    with start_server(cluster.root, token="s3cr3t-token") as running:
        for token in ("", "wrong"):
            with pytest.raises(SnapshotMetadataError, match="refused the security token"):
                list(client_for(running, token=token).allocated("apps", "first"))
        good = client_for(running, token="s3cr3t-token")
        assert blocks_of(list(good.allocated("apps", "first"))) == nonzero_blocks(
            cluster.first.image.read_bytes()
        )


# ------------------------------------------------------------------------------------ TLS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_with_a_self_signed_ca(cluster: Cluster) -> None:
    ca_key, ca_cert = make_ca("lamina test CA")
    cert_pem, key_pem = make_server_cert(ca_key, ca_cert)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _, stranger_ca = make_ca("some other CA")
    stranger_pem = stranger_ca.public_bytes(serialization.Encoding.PEM)
    with start_server(
        cluster.root, tls_cert_pem=cert_pem, tls_key_pem=key_pem, token="tok"
    ) as running:
        assert running.tls
        trusted = client_for(running, ca_pem=ca_pem, token="tok")
        assert blocks_of(list(trusted.allocated("apps", "first"))) == nonzero_blocks(
            cluster.first.image.read_bytes()
        )
        by_name = SnapshotMetadataClient(
            f"localhost:{running.port}", ca_pem=ca_pem, token="tok", retry_delay=0.01
        )
        assert list(by_name.allocated("apps", "first"))
        started = time.monotonic()
        with pytest.raises(SnapshotMetadataError, match="UNAVAILABLE"):
            list(client_for(running, ca_pem=stranger_pem, token="tok").allocated("apps", "first"))
        assert time.monotonic() - started < 10
        with pytest.raises(SnapshotMetadataError, match="UNAVAILABLE"):
            list(client_for(running, token="tok", max_retries=1).allocated("apps", "first"))


# ----------------------------------------------------------------- a deliberately broken server

Script = list[tuple[int, int, list[tuple[int, int]]]]  # (block type, capacity, tuples) per message


@dataclass
class BrokenServicer(pb_grpc.SnapshotMetadataServicer):
    """Sends scripted messages, then optionally fails the stream with a status code.

    ``later`` holds (script, failure) plans for the calls after the first one, in order.
    """

    script: Script = field(default_factory=list)
    then_fail: grpc.StatusCode | None = None
    later: list[tuple[Script, grpc.StatusCode | None]] = field(default_factory=list)
    hold: threading.Event | None = None  # wait for it after the first message
    requests: list[pb.GetMetadataDeltaRequest | pb.GetMetadataAllocatedRequest] = field(
        default_factory=list
    )

    def _play(self, context: grpc.ServicerContext) -> Iterator[pb.GetMetadataDeltaResponse]:
        script, then_fail = self.script, self.then_fail
        if len(self.requests) > 1 and self.later:
            script, then_fail = self.later[min(len(self.requests) - 2, len(self.later) - 1)]
        for i, (kind, capacity, tuples) in enumerate(script):
            response = pb.GetMetadataDeltaResponse(
                block_metadata_type=kind,  # type: ignore[arg-type]
                volume_capacity_bytes=capacity,
            )
            for offset, size in tuples:
                response.block_metadata.add(byte_offset=offset, size_bytes=size)
            yield response
            if i == 0 and self.hold is not None:
                self.hold.wait(10)
        if then_fail is not None:
            context.abort(then_fail, "scripted failure")

    def GetMetadataDelta(
        self, request: pb.GetMetadataDeltaRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetMetadataDeltaResponse]:
        self.requests.append(request)
        yield from self._play(context)

    def GetMetadataAllocated(
        self, request: pb.GetMetadataAllocatedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetMetadataAllocatedResponse]:
        self.requests.append(request)
        for message in self._play(context):
            yield pb.GetMetadataAllocatedResponse.FromString(message.SerializeToString())


@pytest.fixture
def broken() -> Iterator[tuple[BrokenServicer, str]]:
    servicer = BrokenServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SnapshotMetadataServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


FIXED, VARIABLE, UNKNOWN = pb.FIXED_LENGTH, pb.VARIABLE_LENGTH, pb.UNKNOWN
CAP = 1 << 20


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([(FIXED, CAP, [(8192, BLOCK), (4096, BLOCK)])], "out of order"),
        ([(FIXED, CAP, [(8192, BLOCK)]), (FIXED, CAP, [(0, BLOCK)])], "out of order"),
        ([(VARIABLE, CAP, [(0, 3 * BLOCK), (8192, BLOCK)])], "overlaps the previous tuple"),
        ([(FIXED, CAP, [(0, BLOCK), (BLOCK, 0)])], "has size 0"),
        ([(VARIABLE, CAP, [(0, -5)])], "has size -5"),
        ([(VARIABLE, CAP, [(-4096, BLOCK)])], "negative offset"),
        ([(FIXED, CAP, [(CAP - BLOCK, 2 * BLOCK)])], "beyond the volume capacity"),
        ([(FIXED, CAP, [(0, BLOCK)]), (VARIABLE, CAP, [(BLOCK, BLOCK)])], "type changed"),
        ([(FIXED, CAP, [(0, BLOCK)]), (FIXED, 2 * CAP, [(BLOCK, BLOCK)])], "capacity changed"),
        ([(UNKNOWN, CAP, [(0, BLOCK)])], "type is UNKNOWN"),
        ([(FIXED, 0, [])], "capacity 0 is not positive"),
        ([(FIXED, CAP, [(0, BLOCK), (BLOCK, 2 * BLOCK)])], "FIXED_LENGTH tuple at offset 4096"),
    ],
)
def test_malformed_streams_are_rejected(
    broken: tuple[BrokenServicer, str], script: Script, message: str
) -> None:
    servicer, address = broken
    servicer.script = script
    client = SnapshotMetadataClient(address, retry_delay=0.01)
    for stream in (client.delta("ns", "base", "target"), client.allocated("ns", "target")):
        with pytest.raises(ChangedRangesError, match=message) as caught:
            list(stream)
        text = str(caught.value)
        assert "\n" not in text and address in text


def test_extents_are_yielded_while_the_stream_is_still_open(
    broken: tuple[BrokenServicer, str],
) -> None:
    servicer, address = broken
    servicer.hold = threading.Event()
    servicer.script = [(FIXED, CAP, [(0, BLOCK)]), (FIXED, CAP, [(2 * BLOCK, BLOCK)])]
    stream = SnapshotMetadataClient(address).delta("ns", "base", "target")
    extents = iter(stream)
    assert next(extents) == (0, BLOCK)  # the server is still holding its second message
    servicer.hold.set()
    assert list(extents) == [(2 * BLOCK, BLOCK)]


def test_resume_sends_the_end_of_the_last_tuple_and_clips_a_repeated_block(
    broken: tuple[BrokenServicer, str],
) -> None:
    servicer, address = broken
    servicer.script = [(VARIABLE, CAP, [(0, 3 * BLOCK)])]
    servicer.then_fail = grpc.StatusCode.UNAVAILABLE
    # The resumed stream starts with a tuple holding the resume point: it is clipped.
    servicer.later = [([(VARIABLE, CAP, [(2 * BLOCK, 2 * BLOCK), (6 * BLOCK, BLOCK)])], None)]
    client = SnapshotMetadataClient(address, retry_delay=0.01, max_retries=2)
    stream = client.delta("ns", "base", "target", max_results=9)
    assert [m.extents for m in stream.messages()] == [
        ((0, 3 * BLOCK),),
        ((3 * BLOCK, BLOCK), (6 * BLOCK, BLOCK)),
    ]
    assert [r.starting_offset for r in servicer.requests] == [0, 3 * BLOCK]
    assert all(
        isinstance(r, pb.GetMetadataDeltaRequest)
        and r.max_results == 9
        and r.base_snapshot_id == "base"
        for r in servicer.requests
    )
    assert stream.resumes == 1


def test_a_resumed_stream_may_not_go_back(broken: tuple[BrokenServicer, str]) -> None:
    servicer, address = broken
    servicer.script = [(FIXED, CAP, [(0, BLOCK), (BLOCK, BLOCK)])]
    servicer.then_fail = grpc.StatusCode.UNAVAILABLE
    servicer.later = [([(FIXED, CAP, [(0, BLOCK)])], None)]  # starts over from 0
    client = SnapshotMetadataClient(address, retry_delay=0.01)
    with pytest.raises(ChangedRangesError, match="out of order"):
        list(client.allocated("ns", "target"))


def test_retries_are_bounded_when_no_progress_is_made(broken: tuple[BrokenServicer, str]) -> None:
    servicer, address = broken
    servicer.script = []
    servicer.then_fail = grpc.StatusCode.UNAVAILABLE
    client = SnapshotMetadataClient(address, retry_delay=0.01, max_retries=3)
    with pytest.raises(SnapshotMetadataError, match="failed after 4 attempts: UNAVAILABLE"):
        list(client.delta("ns", "base", "target"))
    assert len(servicer.requests) == 4
    servicer.requests.clear()
    servicer.then_fail = grpc.StatusCode.INTERNAL  # not a cut stream: no retry
    with pytest.raises(SnapshotMetadataError, match="INTERNAL: scripted failure"):
        list(client.delta("ns", "base", "target"))
    assert len(servicer.requests) == 1


def test_a_mostly_sparse_gibibyte_delta_streams_fast_and_reads_only_data(tmp_path: Path) -> None:
    gib = 1024 * MiB
    volume = tmp_path / "big.img"
    rng = random.Random(9)
    data_at = [0, 300 * MiB, 700 * MiB, gib - MiB]
    with open(volume, "wb") as f:
        f.truncate(gib)
        for offset in data_at:
            f.seek(offset)
            f.write(rng.randbytes(MiB))
    cluster = LocalCluster(tmp_path / "cluster")
    base = cluster.create_snapshot(str(volume), "big", "before")
    changed = sorted(
        {offset + rng.randrange(0, MiB // BLOCK) * BLOCK for offset in data_at for _ in range(4)}
        | {500 * MiB, 900 * MiB + 3 * BLOCK}  # new data where both had holes
    )
    with open(volume, "r+b") as f:
        for offset in changed:
            f.seek(offset)
            f.write(rng.randbytes(BLOCK))
    cluster.create_snapshot(str(volume), "big", "after")
    with start_server(cluster.root) as running:
        client = client_for(running)
        started = time.monotonic()
        extents = list(client.delta("big", base.handle, "after"))
        elapsed = time.monotonic() - started
        assert extents == [(offset, BLOCK) for offset in changed]
        # Only the data ranges are read (4 MiB of data, 2 new blocks, chunk-aligned at most).
        assert running.settings.bytes_scanned <= 6 * MiB
    assert elapsed < 5


def test_tls_from_the_command_line(cluster: Cluster, tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca("lamina CLI test CA")
    cert_pem, key_pem = make_server_cert(ca_key, ca_cert)
    _, stranger = make_ca("stranger CA")
    files = {
        "cert.pem": cert_pem,
        "key.pem": key_pem,
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "stranger.pem": stranger.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    lamina = [sys.executable, "-m", "lamina.backend.cli.main"]
    server = subprocess.Popen(
        [
            *lamina, "cbt", "serve", "--root", str(cluster.root), "--listen", "127.0.0.1:0",
            "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "TLS" in line, line
        port = line.split()[3].rsplit(":", 1)[1]

        def allocated(ca: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *lamina, "cbt", "allocated", "--address", f"localhost:{port}",
                    "--namespace", "apps", "--snapshot", "first", "--ca-file", str(tmp_path / ca),
                    "-o", "json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip

        good = allocated("ca.pem")
        assert good.returncode == 0, good.stderr
        extents = [
            (b["byte_offset"], b["size_bytes"])
            for m in json.loads(good.stdout)
            for b in m["block_metadata"]
        ]
        assert blocks_of(extents) == nonzero_blocks(cluster.first.image.read_bytes())
        refused = allocated("stranger.pem")
        assert refused.returncode == 1 and refused.stdout == ""
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamina: error: GetMetadataAllocated at")
        assert "CERTIFICATE_VERIFY_FAILED" in lines[0]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
