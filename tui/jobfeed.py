"""Job changes from backend threads to the UI thread, with floods merged.

A backup reports progress several times a second and every log line too. The backend
thread only records the newest view of each job and, if no wake-up is pending, posts one
``JobsPending`` message. The UI thread takes all the newest views at once, no more often
than ``min_interval``, so the screen redraws at most ~10 times a second however busy the
jobs are, and a slow UI never makes a backup wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from textual.message import Message

from lamina.backend.service import JobView

from .messages import JobsPending


class JobFeed:
    def __init__(self, post: Callable[[Message], object], min_interval: float = 0.1) -> None:
        self._post = post
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._latest: dict[str, JobView] = {}
        self._wake_pending = False
        self.merged = 0  # views replaced before the UI saw them (for measurements)

    def push(self, view: JobView) -> None:
        """Record a job's newest view. Safe from any thread; never blocks on the UI."""
        with self._lock:
            previous = self._latest.get(view.id)
            if previous is not None:
                if previous.finished and not view.finished:
                    return  # a late snapshot from before the end: the end wins
                self.merged += 1
            self._latest[view.id] = view
            if self._wake_pending:
                return
            self._wake_pending = True
        self._post(JobsPending())

    def take(self) -> list[JobView]:
        """Everything that changed since the last call (UI thread)."""
        with self._lock:
            views = list(self._latest.values())
            self._latest.clear()
            self._wake_pending = False
        return views
