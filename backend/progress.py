"""Progress events: the one stream every front end (CLI, TUI, API) consumes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Progress:
    phase: str  # e.g. "scanning", "backing up", "restoring", "verifying", "done"
    done: int = 0  # bytes (or items) done in this phase
    total: int | None = None  # None when the total is not known yet (a streamed range list)
    rate: float = 0.0  # bytes per second over the phase so far
    eta: float | None = None  # seconds
    stored: int = 0  # bytes uploaded for new pieces
    deduplicated: int = 0  # bytes found already in the repository
    read: int = 0  # bytes read from the source
    message: str = ""
    elapsed: float = 0.0
    unit: str = "bytes"  # what done and total count: bytes, or items such as "points"

    @property
    def counts_bytes(self) -> bool:
        """Whether done, total and rate are bytes (else items: no byte rate to show)."""
        return self.unit == "bytes"

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


@dataclass
class ProgressTracker:
    """Accumulates counters and emits Progress events at most every ``interval`` seconds."""

    callback: ProgressCallback | None
    interval: float = 0.2
    phase: str = "starting"
    total: int | None = None
    done: int = 0
    stored: int = 0
    deduplicated: int = 0
    read: int = 0
    unit: str = "bytes"
    _phase_start: float = field(default_factory=time.monotonic)
    _start: float = field(default_factory=time.monotonic)
    _last_emit: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_phase(
        self, phase: str, total: int | None = None, message: str = "", *, unit: str = "bytes"
    ) -> None:
        with self._lock:
            self.phase = phase
            self.total = total
            self.unit = unit
            self.done = 0
            self._phase_start = time.monotonic()
        self.emit(force=True, message=message)

    def add(self, done: int = 0, *, stored: int = 0, deduplicated: int = 0, read: int = 0) -> None:
        with self._lock:
            self.done += done
            self.stored += stored
            self.deduplicated += deduplicated
            self.read += read
        self.emit()

    def snapshot(self, message: str = "") -> Progress:
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._phase_start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = None
            if self.total is not None and rate > 0:
                eta = max(0.0, (self.total - self.done) / rate)
            return Progress(
                phase=self.phase,
                done=self.done,
                total=self.total,
                rate=rate,
                eta=eta,
                stored=self.stored,
                deduplicated=self.deduplicated,
                read=self.read,
                message=message,
                elapsed=now - self._start,
                unit=self.unit,
            )

    def emit(self, *, force: bool = False, message: str = "") -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval:
            return
        self._last_emit = now
        self.callback(self.snapshot(message))

    def finish(self, message: str = "") -> None:
        if self.callback is not None:
            p = self.snapshot(message)
            self.callback(replace(p, phase="done", eta=0.0))
