"""Real lamina.v1 servers on loopback for the API tests, and data that backs up slowly.

zstd at level 19 compresses random two-letter data at about 2 MiB/s per core (measured
here: text goes three times faster, random bytes ten times). In a repository set to level
19, images of a few MiB then make backups that last seconds: long enough to be watched,
queued, cancelled or interrupted, without big files or artificial delays.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from lamina.backend.api.server import ApiServer, ServerOptions
from lamina.backend.service import Service, init_repository
from lamina.protos import lamina_v1_pb2_grpc as pb_grpc

TOKEN = secrets.token_hex(24)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
KiB = 1024
MiB = 1024 * KiB
SLOW_LEVEL = 19
SMALL_GRID = 256 * KiB  # pieces of about a tenth of a second each: cancels land quickly
_TWO_LETTERS = bytes(ord("a") + (i & 1) for i in range(256))


def slow_image(path: Path, size: int, *, seed: int) -> Path:
    """Random a's and b's: every piece new, each one slow to compress at level 19."""
    path.write_bytes(random.Random(seed).randbytes(size).translate(_TWO_LETTERS))
    return path


def slow_repository(path: Path) -> str:
    url = str(path)
    init_repository(url, grid_size=SMALL_GRID, zstd_level=SLOW_LEVEL)
    return url


@contextmanager
def running_server(
    service: Service,
    *,
    token: str | None = TOKEN,
    max_backups: int = 2,
    max_backups_per_volume: int = 1,
    allowed_paths: list[str] | None = None,
) -> Iterator[ApiServer]:
    server = ApiServer(
        service,
        ServerOptions(
            listen="127.0.0.1:0",
            token=token,
            max_backups=max_backups,
            max_backups_per_volume=max_backups_per_volume,
            allowed_paths=allowed_paths or [],
        ),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop_now()


@contextmanager
def stub_for(address: str) -> Iterator[pb_grpc.LaminaServiceStub]:
    channel = grpc.insecure_channel(address)
    try:
        yield pb_grpc.LaminaServiceStub(channel)
    finally:
        channel.close()
