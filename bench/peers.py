"""The programs under comparison, each driven through its real command line.

Every call returns what was measured; failures raise StepFailed with the program's last words.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import Measured, StepFailed, run_measured

VOLUME_NAME = "bench"
RESTIC_HOST = "bench"


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that could point a tool elsewhere."""
    dropped = ("AWS_", "RESTIC_", "BORG_", "LAMINA_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def folder_bytes(path: Path) -> int:
    """Bytes stored in a local repository: the sum of its files' sizes."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool_version(command: list[str]) -> str:
    try:
        return run_measured(command, env=clean_environment(), timeout=60).stdout.strip()
    except (StepFailed, OSError) as e:
        return f"unknown ({e})"


@dataclass(frozen=True)
class LaminaBackup:
    measured: Measured
    point: dict[str, Any]


class Lamina:
    """lamina's CLI, as a user runs it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.binary = str(Path(sys.executable).parent / "lamina")
        if not os.access(self.binary, os.X_OK):
            found = shutil.which("lamina")
            if found is None:
                raise StepFailed("the lamina command is not installed in this environment")
            self.binary = found
        self.env = {**clean_environment(), **env}
        # As installed from a wheel, lamina runs from cached bytecode. Without the cache
        # (PYTHONDONTWRITEBYTECODE in the caller's environment) every run would compile
        # its modules again, about 0.1-0.2 s that no user pays: write it once, untimed.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        run_measured([self.binary, "--help"], env=self.env, timeout=120)

    def init(self, repo: str) -> None:
        run_measured([self.binary, "repo", "init", repo, "--json"], env=self.env, timeout=120)

    def backup(
        self,
        repo: str,
        image: Path,
        changed_ranges: Path | None = None,
        *,
        server: LaminaServer | None = None,
    ) -> LaminaBackup:
        where = ["--server", server.address] if server is not None else ["--repo", repo]
        command = [self.binary, "backup", *where, "--volume", VOLUME_NAME, str(image)]
        if changed_ranges is not None:
            command += ["--changed-ranges", str(changed_ranges)]
        measured = run_measured([*command, "--json", "-q"], env=self.env)
        point = json.loads(measured.stdout)
        return LaminaBackup(measured, point)

    def restore(self, repo: str, point_id: str, target: Path) -> Measured:
        return run_measured(
            [self.binary, "restore", "--repo", repo, point_id, str(target), "--json", "-q"],
            env=self.env,
        )


class LaminaServer:
    """``lamina serve`` of one repository on a free loopback port, for jobs sent to a
    process that stays (as the scheduler and scripts send them)."""

    def __init__(self, lamina: Lamina, repo: str, allowed: Path, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.lamina = lamina
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [
                lamina.binary,
                "serve",
                "--repo",
                repo,
                "--listen",
                self.address,
                "--insecure-no-auth",
                "--allow-path",
                str(allowed),
            ],
            env=lamina.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None:
                raise StepFailed(f"lamina serve exited with {self._process.returncode}; see {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StepFailed("lamina serve did not listen within 60 s") from None
                time.sleep(0.1)

    def job_seconds(self, job_id: str) -> float:
        """How long the server's job ran, from its history (queued to ended)."""
        measured = run_measured(
            [self.lamina.binary, "history", "--server", self.address, "--json"],
            env=self.lamina.env,
            timeout=120,
        )
        for job in json.loads(measured.stdout):
            if job.get("id") == job_id and job.get("duration_seconds") is not None:
                return float(job["duration_seconds"])
        raise StepFailed(f"job {job_id} is not in the server's history")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


class Restic:
    """restic with an S3 repository; it always encrypts, and compresses (auto) in format 2."""

    def __init__(self, env: Mapping[str, str], repository: str, cache_dir: Path) -> None:
        self.env = {
            **clean_environment(),
            **env,
            "RESTIC_REPOSITORY": repository,
            "RESTIC_PASSWORD": "lamina-bench",
        }
        self.cache_dir = cache_dir

    def _command(self, *args: str) -> list[str]:
        return ["restic", "--cache-dir", str(self.cache_dir), *args]

    def init(self) -> None:
        run_measured(self._command("init"), env=self.env, timeout=120)

    def backup(self, image: Path) -> Measured:
        # A fixed host makes the second run find the first as its parent snapshot.
        return run_measured(
            self._command("backup", "--host", RESTIC_HOST, "--quiet", str(image)), env=self.env
        )

    def restore(self, target_dir: Path) -> Measured:
        return run_measured(
            self._command("restore", "latest", "--host", RESTIC_HOST, "--target", str(target_dir)),
            env=self.env,
        )


class Borg:
    """borg 1.2 with a local, unencrypted repository and 4 MiB fixed chunks."""

    def __init__(self, repository: Path, home: Path) -> None:
        self.repository = repository
        self.env = {
            **clean_environment(),
            "BORG_BASE_DIR": str(home),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def init(self) -> None:
        run_measured(["borg", "init", "-e", "none", str(self.repository)], env=self.env)

    def create(self, image: Path, archive: str) -> Measured:
        # --sparse: skip holes like lamina does (SEEK_HOLE), which the fixed chunker supports.
        return run_measured(
            [
                "borg",
                "create",
                "--chunker-params",
                "fixed,4194304",
                "--sparse",
                f"{self.repository}::{archive}",
                image.name,
            ],
            env=self.env,
            cwd=image.parent,
        )

    def extract(self, archive: str, target_dir: Path) -> Measured:
        return run_measured(
            ["borg", "extract", "--sparse", f"{self.repository}::{archive}"],
            env=self.env,
            cwd=target_dir,
        )
