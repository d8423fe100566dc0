"""Who runs a job: this host, this process and this boot, so that a later process can tell
a job whose process died (``kill -9``, a crash, a reboot) from one still running.

A process is named by its pid *and* its start time (field 22 of ``/proc/PID/stat``, in
clock ticks since boot), so a recycled pid is not mistaken for the process that died; the
boot id (``/proc/sys/kernel/random/boot_id``) tells a pid of an earlier boot from one now.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    boot_id: str
    start: str  # the process's start time in clock ticks since boot ("" when unknown)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` as the kernel records it; None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


@cache
def this_process() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(socket.gethostname(), pid, _boot_id(), process_start(pid) or "")


def _current() -> ProcessIdentity:
    # A forked child (a mount daemon) is another process: its pid names it.
    me = this_process()
    if me.pid != os.getpid():
        this_process.cache_clear()
        me = this_process()
    return me


def current_process() -> ProcessIdentity:
    return _current()


def is_alive_here(pid: int, boot_id: str, start: str) -> bool:
    """Whether the process recorded on this host is still the one running (same boot, same
    pid, same start time)."""
    me = _current()
    if boot_id and me.boot_id and boot_id != me.boot_id:
        return False
    now = process_start(pid)
    if now is None:
        return False
    return not start or now == start
