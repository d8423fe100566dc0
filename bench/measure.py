"""Running one program under measurement: wall time, peak RSS and CPU time of the child."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StepFailed(RuntimeError):
    """A measured program failed; the message carries its exit status and last output."""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    cpu_seconds: float
    stdout: str


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 3600.0,
) -> Measured:
    """Run ``command`` to completion; fail with its stderr tail if it exits non-zero.

    ``os.wait4`` returns the resource usage of exactly this child, so peak RSS is its own
    and not the maximum over everything the benchmark started before.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=cwd,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if timed_out.is_set():
        raise StepFailed(f"{command[0]} timed out after {timeout:.0f} s")
    if process.returncode != 0:
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:])
        raise StepFailed(f"{Path(command[0]).name} exited with {process.returncode}: {tail}")
    return Measured(
        seconds=seconds,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        stdout=stdout,
    )


def settle(drop_caches: bool) -> None:
    """Before every timed step: write back dirty pages, and drop the page cache if asked."""
    os.sync()
    if drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def fsync_path(path: Path) -> None:
    """Flush a restored file, so every tool's restore time includes reaching the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
