"""Volumes and servers that try to take over the terminal of whoever looks at them.

A hostile ext4 image holds file names, a symlink target and a file's contents with
terminal sequences (CSI, OSC title and clipboard, C1 controls), bidirectional overrides,
Textual markup and bytes that are not UTF-8; ``mkfs.ext4 -d`` copies such names as they
are. A hostile lamina server is the real gRPC servicer over a real repository whose
replies get the same kind of strings added before they are sent.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc

from lamina.backend.api.server import LaminaServicer, PathPolicy
from lamina.backend.api.tasks import TaskManager
from lamina.backend.service import Service
from lamina.protos import lamina_v1_pb2 as pb
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc

from .ext4_trees import MiB, mkfs_ext4

CLEAR = "\x1b[2J\x1b[H"
TITLE = "\x1b]0;owned\x07"
CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"
C1_CSI = "\x9b31m"
RLO = "\u202e"
MARKUP = "[bold red]loud[blink]"
# One string with every kind of trouble a protobuf string can carry (it must be UTF-8).
HOSTILE = f"evil{CLEAR}{TITLE}{CLIPBOARD}{C1_CSI}{RLO}txt.exe{MARKUP}\u2066x\u2069"
HOSTILE_SHOWN = (
    "evil\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\x1b]52;c;ZXZpbA==\\x07\\x9b31m\\u202etxt.exe"
    "[bold red]loud[blink]\\u2066x\\u2069"
)

# File names as bytes, each with what a person must see instead.
HOSTILE_FILES: dict[bytes, str] = {
    f"clear{CLEAR}".encode(): "clear\\x1b[2J\\x1b[H",
    f"title{TITLE}".encode(): "title\\x1b]0;owned\\x07",
    f"clip{CLIPBOARD}".encode(): "clip\\x1b]52;c;ZXZpbA==\\x07",
    f"c1{C1_CSI}".encode(): "c1\\x9b31m",
    f"invoice{RLO}fdp.exe".encode(): "invoice\\u202efdp.exe",
    b"latin1-\xe9t\xe9": "latin1-\\xe9t\\xe9",
    MARKUP.encode(): MARKUP,
    b"new\nline": "new\\nline",
}
HOSTILE_DIR = (b"dir\x1b[5m", "dir\\x1b[5m")
HOSTILE_LINK = (b"link", b"\x1b]0;target\x07", "\\x1b]0;target\\x07")
COLOURS = b"plain \x1b[31mred\x1b[0m text\n\x1b]0;retitled\x07second line\n"
COLOURS_SHOWN = ("plain \\x1b[31mred\\x1b[0m text", "\\x1b]0;retitled\\x07second line")


def make_hostile_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    base = os.fsencode(root)
    for name in HOSTILE_FILES:
        with open(os.path.join(base, name), "wb") as f:
            f.write(b"hostile name\n")
    os.mkdir(os.path.join(base, HOSTILE_DIR[0]))
    with open(os.path.join(base, HOSTILE_DIR[0], b"inside"), "wb") as f:
        f.write(b"inside\n")
    os.symlink(HOSTILE_LINK[1], os.path.join(base, HOSTILE_LINK[0]))
    (root / "colours.txt").write_bytes(COLOURS)
    return root


def make_hostile_image(workdir: Path) -> Path:
    return mkfs_ext4(make_hostile_tree(workdir / "hostile-tree"), workdir / "hostile.img", 8 * MiB)


def unsafe_characters(text: str) -> list[str]:
    """The characters of ``text`` that must never reach a terminal raw."""
    return sorted(
        {
            c
            for c in text
            if c != "\n"
            and (not c.isprintable() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"))
        }
    )


class HostileServicer(LaminaServicer):
    """The real servicer, whose replies carry hostile strings in every field people read."""

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        reply = super().GetServerInfo(request, context)
        reply.repository.url = HOSTILE
        reply.repository.compression = HOSTILE
        return reply

    def ListClusters(
        self, request: pb.ListClustersRequest, context: grpc.ServicerContext
    ) -> pb.ListClustersResponse:
        reply = super().ListClusters(request, context)
        for cluster in reply.clusters:
            cluster.server = HOSTILE
        reply.clusters.append(pb.Cluster(name=HOSTILE, kind=HOSTILE, current=False))
        return reply

    def CheckClusters(
        self, request: pb.CheckClustersRequest, context: grpc.ServicerContext
    ) -> pb.CheckClustersResponse:
        reply = super().CheckClusters(request, context)
        for check in reply.checks:
            check.detail = HOSTILE
        return reply

    def ListClusterVolumes(
        self, request: pb.ListClusterVolumesRequest, context: grpc.ServicerContext
    ) -> pb.ListClusterVolumesResponse:
        reply = super().ListClusterVolumes(request, context)
        for volume in reply.volumes:
            volume.storage_class = HOSTILE
            volume.mode = HOSTILE
        return reply

    def _spoil(self, points: list[pb.Point]) -> None:
        for point in points:
            point.notes.append(HOSTILE)
            point.volume.namespace = HOSTILE  # a volume the repository says it holds

    def ListPoints(
        self, request: pb.ListPointsRequest, context: grpc.ServicerContext
    ) -> pb.ListPointsResponse:
        reply = super().ListPoints(request, context)
        self._spoil(list(reply.points))
        return reply

    def GetChain(
        self, request: pb.GetChainRequest, context: grpc.ServicerContext
    ) -> pb.GetChainResponse:
        reply = super().GetChain(request, context)
        self._spoil(list(reply.points))
        return reply

    def GetPoint(self, request: pb.GetPointRequest, context: grpc.ServicerContext) -> pb.Point:
        reply = super().GetPoint(request, context)
        self._spoil([reply])
        return reply

    def _task(self, task: pb.Task) -> pb.Task:
        task.description = HOSTILE
        if task.summary:
            task.summary = HOSTILE
        task.log.append(HOSTILE)
        return task

    def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        reply = super().ListTasks(request, context)
        for task in reply.tasks:
            self._task(task)
        return reply

    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        return self._task(super().GetTask(request, context))

    def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Task]:
        for task in super().WatchTask(request, context):
            yield self._task(task)


@contextmanager
def hostile_server(service: Service) -> Iterator[str]:
    """A lamina.v1 server on loopback (no token) whose replies are hostile; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = HostileServicer(service, TaskManager(), PathPolicy([]))
    pb_grpc.add_LaminaServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
