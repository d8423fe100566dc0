"""Running one program under measurement: wall time, peak RSS and CPU time of the child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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


# Runs one command in a freshly forked child and reports that child's own usage. A child
# started straight from the benchmark would inherit the benchmark's memory high-water mark
# (Linux carries it across fork and exec into ru_maxrss), so a small interpreter forks it.
_SHIM = """
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"cannot run {command[0]}: {e.strerror}\\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as f:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss,
               "cpu_seconds": usage.ru_utime + usage.ru_stime}, f)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 3600.0,
) -> Measured:
    """Run ``command`` to completion; fail with its stderr tail if it exits non-zero.

    Wall time, peak RSS and CPU time are those of exactly this program (see ``_SHIM``).
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="lamina-bench-usage-") as scratch,
    ):
        report = Path(scratch) / "usage.json"
        process = subprocess.Popen(
            [sys.executable, "-c", _SHIM, str(report), *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # a timeout kills the program and the shim together
        )
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            timed_out = True
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        usage = json.loads(report.read_text()) if report.exists() else None
    if timed_out:
        raise StepFailed(f"{Path(command[0]).name} timed out after {timeout:.0f} s")
    if process.returncode != 0 or usage is None:
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:])
        raise StepFailed(f"{Path(command[0]).name} exited with {process.returncode}: {tail}")
    return Measured(
        seconds=float(usage["seconds"]),
        peak_rss_bytes=int(usage["maxrss_kib"]) * 1024,  # Linux reports KiB
        cpu_seconds=float(usage["cpu_seconds"]),
        stdout=stdout,
    )


def cpu_idle_fraction(window: float) -> float:
    """Share of all CPUs' time spent idle over the next ``window`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    idle_before, total_before = sample()
    time.sleep(window)
    idle_after, total_after = sample()
    elapsed = total_after - total_before
    return (idle_after - idle_before) / elapsed if elapsed > 0 else 1.0


def settle(drop_caches: bool, pause: float, idle_target: float, max_wait: float) -> float:
    """Before every timed step: write back dirty pages, drop the page cache if asked, idle for
    ``pause`` seconds, then wait (up to ``max_wait``) for the CPUs to be ``idle_target`` idle.

    The idling lets memory freed by the previous step go back to where free memory goes
    (on a VM with free-page reporting, to the host), so no tool starts with memory that the
    tool before it had just warmed up. The idle wait keeps other work on a shared machine out
    of the figures as far as it can. Returns the idle share last seen.
    """
    os.sync()
    if drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    time.sleep(pause)
    deadline = time.monotonic() + max_wait
    idle = cpu_idle_fraction(1.0)
    while idle < idle_target and time.monotonic() < deadline:
        idle = cpu_idle_fraction(1.0)
    return idle


def fsync_path(path: Path) -> None:
    """Flush a restored file, so every tool's restore time includes reaching the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
