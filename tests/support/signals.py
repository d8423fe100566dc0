"""Signal state for tests that interrupt real processes (Ctrl-C is SIGINT)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def default_sigint() -> None:
    """A ``preexec_fn``: SIGINT at its default and unblocked in the child, whatever the test
    process left ignored or blocked (both are inherited across exec), as in a terminal."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_state(pid: int | None = None) -> str:
    """The blocked, ignored and caught signal masks of a process (this one by default), for a
    failure message."""
    status = Path(f"/proc/{pid or os.getpid()}/status")
    try:
        lines = status.read_text().splitlines()
    except OSError as error:
        return f"no status of process {pid}: {error}"
    wanted = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return " ".join(line.replace("\t", "") for line in lines if line.startswith(wanted))
