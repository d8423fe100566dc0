"""A client downloading a tree trusts nothing the server sends.

The server here is a test double, clearly so: a real gRPC server on loopback whose
ReadTree answers with hand-made streams (hostile names, symlink tricks, broken streams),
which a compromised or buggy lamina server could send. The client under test is the real
ApiClient.download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from lamina.backend.service.remote import ApiClient
from lamina.backend.service.tree_writer import MalformedStream
from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc
from tests.support.volumes import sha256_file


def entry(
    *path: bytes | str, kind: str = "file", size: int = 0, target: bytes = b""
) -> pb.TreeItem:
    raw = [p.encode() if isinstance(p, str) else p for p in path]
    file_entry = pb.FileEntry(
        name=raw[-1].decode(errors="replace"),
        raw_name=raw[-1],
        kind=kind,
        size=size,
        mode=0o40755 if kind == "dir" else 0o100644,
        mtime_ns=1_700_000_000 * 10**9,
        atime_ns=1_700_000_000 * 10**9,
    )
    if kind == "symlink":
        file_entry.link_target = target
    return pb.TreeItem(
        entry=pb.TreeEntry(path=raw, display_path="/".join(map(repr, raw)), entry=file_entry)
    )


def chunk(offset: int, data: bytes) -> pb.TreeItem:
    return pb.TreeItem(chunk=pb.Chunk(offset=offset, data=data))


END = pb.TreeItem(end=pb.TreeEnd())


class ScriptedTrees(pb_grpc.LaminaServiceServicer):
    """Answers ReadTree with the stream scripted under the requested point's name."""

    def __init__(self, scripts: dict[str, list[pb.TreeItem]]) -> None:
        self.scripts = scripts

    def ReadTree(
        self, request: pb.ReadTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TreeItem]:
        yield from self.scripts[request.point]


HOSTILE = [
    entry("..", kind="dir"),
    entry("a/b", size=3),
    chunk(0, b"a/b"),
    entry(b"", size=0),
    entry("nul\0name", size=0),
    entry("ok", kind="dir"),
    entry("ok", "inner.txt", size=5),
    chunk(0, b"hello"),
    entry("ok", "..", "up.txt", size=2),
    chunk(0, b"up"),
    entry("link", kind="symlink", target=b"OUTSIDE"),
    entry("link", "planted.txt", size=4),
    chunk(0, b"evil"),
    entry("nowhere", "orphan.txt", size=1),
    chunk(0, b"x"),
    entry("ok", kind="dir"),  # again: merged, never replaced
    entry("ok", "inner.txt", size=3),  # exists: not replaced, its chunks still read
    chunk(0, b"bad"),
    entry("tail.txt", size=4),
    chunk(0, b"tail"),
    END,
]

MALFORMED = {
    "too-long": ([entry("f", size=2), chunk(0, b"abc"), END], "more bytes than its size"),
    "cut-short": ([entry("f", size=4), chunk(0, b"ab"), entry("g"), END], "before the end of"),
    "out-of-order": ([entry("f", size=4), chunk(2, b"ab"), END], "out of order"),
    "no-end": ([entry("f", size=2), chunk(0, b"ab")], "ended before its end marker"),
    "stray-chunk": ([chunk(0, b"ab"), END], "a chunk outside a file"),
}


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    scripts = {"hostile": HOSTILE, **{name: items for name, (items, _) in MALFORMED.items()}}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # The generated base answers UNIMPLEMENTED for every other method.
    servicer = ScriptedTrees(scripts)  # type: ignore[abstract]
    pb_grpc.add_LaminaServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_hostile_names_and_symlinks_never_escape_the_target(address: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for item in HOSTILE:
        if item.WhichOneof("item") == "entry" and item.entry.entry.kind == "symlink":
            item.entry.entry.link_target = str(outside).encode()
    passwd = sha256_file("/etc/passwd")
    target = tmp_path / "target"
    with ApiClient(address) as client:
        report = client.download("hostile", "/", str(target))
    assert {(s.path, s.reason) for s in report.skipped} == {
        ("/..", "the name '..' refers to a directory itself"),
        ("/a/b", "the name contains '/'"),
        ("/", "empty name"),
        ("/nul\\x00name", "the name contains a NUL byte"),
        ("/ok/../up.txt", "the name '..' refers to a directory itself"),
        ("/link/planted.txt", "its folder was not sent before it"),
        ("/nowhere/orphan.txt", "its folder was not sent before it"),
        ("/ok/inner.txt", "already exists in the target; not replaced"),
    }
    # what was safe is there, exactly
    assert sorted(os.listdir(target)) == ["link", "ok", "tail.txt"]
    assert os.listdir(target / "ok") == ["inner.txt"]
    assert (target / "ok" / "inner.txt").read_bytes() == b"hello"
    assert (target / "tail.txt").read_bytes() == b"tail"
    assert os.readlink(target / "link") == str(outside)
    # and nothing went through the symlink or above the target
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["outside", "target"]
    assert sha256_file("/etc/passwd") == passwd
    assert (report.files, report.directories, report.symlinks) == (2, 2, 1)  # "ok" came twice


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_broken_streams_fail_and_leave_no_partial_file(
    address: str, tmp_path: Path, name: str
) -> None:
    _, expected = MALFORMED[name]
    with ApiClient(address) as client, pytest.raises(MalformedStream, match=expected):
        client.download(name, "/", str(tmp_path / "target"))
    leftovers = sorted(p.name for p in (tmp_path / "target").iterdir())
    # a file whose bytes did not all arrive is removed; a complete one stays
    assert leftovers == (["f"] if name == "no-end" else [])
