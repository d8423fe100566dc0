"""A real process on a pseudo-terminal: what a user at a terminal runs, typed into and read.

The output is drained by a thread (a full pty would block the child), kept as bytes, and
searched with ``wait_for``; ``send`` types into the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Sequence
from fcntl import ioctl

from tests.support.signals import default_sigint, signal_state


class TerminalProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        rows: int = 40,
        columns: int = 120,
    ) -> None:
        master, slave = os.openpty()
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**(env if env is not None else os.environ), "TERM": "xterm-256color"},
            cwd=cwd,
            start_new_session=True,  # the pty becomes its controlling terminal
            preexec_fn=default_sigint,
        )
        os.close(slave)
        self.master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._output += data

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def text(self) -> str:
        """The output with escape sequences taken out."""
        raw = self.output.decode("utf-8", "replace")
        return re.sub(
            r"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|.)", "", raw
        )

    def send(self, data: str | bytes) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None and not condition():
                raise AssertionError(
                    f"the process exited ({self.process.returncode}) before {what}:\n{self.text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-2000:]}")
            time.sleep(0.05)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        self.wait_until(lambda: text in self.text(), repr(text), timeout)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {self.process.pid} still runs after {timeout} s; its signals: "
                f"{signal_state(self.process.pid)}; ours: {signal_state()}; "
                f"its screen: {self.text()[-1500:]!r}"
            ) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self._reader.join(5)

    def __enter__(self) -> TerminalProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
