"""Real lamina.v1 servers on loopback for the API tests, and data that backs up slowly.

zstd at level 19 compresses random two-letter data at about 2 MiB/s per core (measured
here: text goes three times faster, random bytes ten times). In a repository set to level
19, images of a few MiB then make backups that last seconds: long enough to be watched,
queued, cancelled or interrupted, without big files or artificial delays.
"""

from __future__ import annotations

import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from lamina.backend.api.server import ApiServer, ServerOptions
from lamina.backend.service import BackupCaps, Service, init_repository
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
    backup_caps: BackupCaps | None = None,
    allowed_paths: list[str] | None = None,
) -> Iterator[ApiServer]:
    """A server over ``service``; ``backup_caps`` sets the service's caps (as `lamina serve
    --max-backups` does), else the service keeps its own."""
    if backup_caps is not None:
        service.set_backup_caps(backup_caps)
    server = ApiServer(
        service,
        ServerOptions(listen="127.0.0.1:0", token=token, allowed_paths=allowed_paths or []),
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


LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


class StderrLines:
    """The stderr of a process, read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self.reader = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class ServeProcess:
    """A `lamina serve` process on loopback and what it logs."""

    proc: subprocess.Popen[str]
    address: str
    log: StderrLines


@contextmanager
def lamina_serve(url: str, token_file: Path, *args: str) -> Iterator[ServeProcess]:
    """Run `lamina serve --repo URL` on a free loopback port until the block ends (SIGTERM)."""
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [
            *LAMINA,
            "serve",
            "--repo",
            url,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(token_file),
            "--grace",
            "0",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = StderrLines(proc)
    try:
        address = log.wait_for(r"listening on (\S+) ").group(1)
        yield ServeProcess(proc, address, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.reader.join(timeout=5)
