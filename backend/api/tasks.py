"""Tasks: the service layer's Jobs behind a queue with backup limits, watchable by many.

A backup waits in the queue until it fits both caps: at most ``max_backups`` running in
all and at most ``max_backups_per_volume`` of one volume (1 by default, so two backups of
one volume never interleave). A queued task that cannot start yet does not hold up a later
one that can. Restores, verifies, extracts and deletes start at once.

Every change of a task (state, progress, queue position) bumps its ``version`` and wakes
the watchers, who then take a consistent ``TaskView`` snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import LaminaError
from ..progress import Progress
from ..service import Job, JobState, PointInfo, VerifyReport, VolumeRef, shown
from .errors import ShuttingDown, TaskNotFound

log = logging.getLogger("lamina.api.tasks")

QUEUED = "queued"
RUNNING = "running"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINISHED = (CANCELLED, SUCCEEDED, FAILED)

_FROM_JOB = {
    JobState.SUCCEEDED: SUCCEEDED,
    JobState.FAILED: FAILED,
    JobState.CANCELLED: CANCELLED,
}
LOG_LINES_KEPT = 200
FINISHED_TASKS_KEPT = 1000


@dataclass
class _Task:
    id: str
    kind: str
    description: str
    launch: Callable[[], Job]
    limited: bool  # counts against the backup caps
    volume: VolumeRef | None
    point: str
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    started: float | None = None
    finished: float | None = None
    job: Job | None = None
    error: str | None = None
    version: int = 0
    cancel_requested: bool = False
    unsubscribe: Callable[[], None] | None = None


@dataclass(frozen=True)
class TaskView:
    """A task at one moment, safe to read from any thread."""

    id: str
    kind: str
    description: str
    state: str
    queue_position: int  # 1 = next to start; 0 when not queued
    progress: Progress | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    volume: VolumeRef | None
    point: str
    log: tuple[str, ...]
    result: Any  # the job's result once succeeded
    version: int

    @property
    def done(self) -> bool:
        return self.state in FINISHED


def _log_lines(job: Job | None) -> tuple[str, ...]:
    """The job's log without multi-line entries (tracebacks stay in the server's log)."""
    if job is None:
        return ()
    lines = [line for line in list(job.log) if "\n" not in line.strip()]
    return tuple(lines[-LOG_LINES_KEPT:])


class TaskManager:
    def __init__(self, *, max_backups: int = 2, max_backups_per_volume: int = 1) -> None:
        if max_backups < 1 or max_backups_per_volume < 1:
            raise ValueError("backup limits must be at least 1")
        self.max_backups = max_backups
        self.max_backups_per_volume = max_backups_per_volume
        self._cond = threading.Condition(threading.RLock())
        self._tasks: dict[str, _Task] = {}
        self._queue: list[_Task] = []
        self._running_backups = 0
        self._running_by_volume: Counter[VolumeRef] = Counter()
        self._closing = False

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        kind: str,
        description: str,
        launch: Callable[[], Job],
        *,
        limited: bool = False,
        volume: VolumeRef | None = None,
        point: str = "",
    ) -> TaskView:
        """Start now if a slot is free, else queue. A launch that fails at once raises."""
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new tasks")
            task = _Task(
                id=uuid.uuid4().hex[:12],
                kind=kind,
                description=description,
                launch=launch,
                limited=limited,
                volume=volume,
                point=point,
            )
            if self._fits(task):
                self._launch(task, raise_errors=True)
            else:
                self._queue.append(task)
                log.info(
                    "task %s queued at position %d: %s", task.id, len(self._queue), description
                )
            self._tasks[task.id] = task
            self._forget_old()
            self._changed(task)
            return self._view(task)

    def _fits(self, task: _Task) -> bool:
        if not task.limited:
            return True
        assert task.volume is not None
        return (
            self._running_backups < self.max_backups
            and self._running_by_volume[task.volume] < self.max_backups_per_volume
        )

    def _launch(self, task: _Task, *, raise_errors: bool = False) -> None:
        try:
            job = task.launch()
        except LaminaError as e:
            if raise_errors:
                raise
            task.state, task.error, task.finished = FAILED, str(e), time.time()
            log.info("task %s failed to start: %s", task.id, e)
            return
        task.job, task.state, task.started = job, RUNNING, time.time()
        if task.limited:
            assert task.volume is not None
            self._running_backups += 1
            self._running_by_volume[task.volume] += 1
        log.info("task %s started: %s", task.id, task.description)
        task.unsubscribe = job.subscribe(lambda j: self._on_job(task, j))
        if job.done:
            self._on_job(task, job)

    def _on_job(self, task: _Task, job: Job) -> None:
        with self._cond:
            if task.state in FINISHED:
                return
            if job.done:
                task.state = _FROM_JOB.get(job.state, FAILED)
                task.error = job.error
                task.finished = job.finished or time.time()
                if task.state == SUCCEEDED and isinstance(job.result, PointInfo):
                    task.point = job.result.id
                if task.unsubscribe is not None:
                    task.unsubscribe()
                if task.limited:
                    assert task.volume is not None
                    self._running_backups -= 1
                    self._running_by_volume[task.volume] -= 1
                log.info(
                    "task %s %s: %s%s",
                    task.id,
                    task.state,
                    task.description,
                    f" ({task.error})" if task.error else "",
                )
                self._schedule()
            self._changed(task)

    def _schedule(self) -> None:
        """Start every queued task that fits now, oldest first."""
        started = False
        for task in list(self._queue):
            if self._fits(task):
                self._queue.remove(task)
                self._launch(task)
                self._changed(task)
                started = True
        if started:
            for waiting in self._queue:  # their positions moved
                self._changed(waiting)

    def _changed(self, task: _Task) -> None:
        task.version += 1
        self._cond.notify_all()

    def _forget_old(self) -> None:
        finished = [t for t in self._tasks.values() if t.state in FINISHED]
        for task in finished[: max(0, len(finished) - FINISHED_TASKS_KEPT)]:
            del self._tasks[task.id]

    # ------------------------------------------------------------------ reading

    def _get(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task {shown(task_id)} on this server")
        return task

    def _view(self, task: _Task) -> TaskView:
        job = task.job
        state = task.state
        if state == RUNNING and (
            task.cancel_requested or (job is not None and job.cancel_requested)
        ):
            state = CANCELLING
        return TaskView(
            id=task.id,
            kind=task.kind,
            description=task.description,
            state=state,
            queue_position=self._queue.index(task) + 1 if task in self._queue else 0,
            progress=job.progress if job is not None else None,
            error=task.error,
            created=task.created,
            started=task.started,
            finished=task.finished,
            volume=task.volume,
            point=task.point,
            log=_log_lines(job),
            result=job.result if job is not None and state == SUCCEEDED else None,
            version=task.version,
        )

    def get(self, task_id: str) -> TaskView:
        with self._cond:
            return self._view(self._get(task_id))

    def all(self) -> list[TaskView]:
        with self._cond:
            return [self._view(t) for t in self._tasks.values()]

    def verify_states(self) -> dict[str, str]:
        """Point id -> "verifying", "ok" or "corrupt", from this server's one-point verifies."""
        states: dict[str, str] = {}
        with self._cond:
            for task in self._tasks.values():
                if task.kind != "verify" or not task.point:
                    continue
                if task.state in (QUEUED, RUNNING):
                    states[task.point] = "verifying"
                elif task.state == SUCCEEDED and task.job is not None:
                    report = task.job.result
                    ok = isinstance(report, VerifyReport) and report.ok
                    states[task.point] = "ok" if ok else "corrupt"
                elif task.state == FAILED:
                    states[task.point] = "corrupt"
                else:
                    states.pop(task.point, None)
        return states

    def watch(self, task_id: str, active: Callable[[], bool]) -> Iterator[TaskView]:
        """The task now, then at every change; ends after the finished state, or when
        ``active()`` turns false (the caller went away)."""
        with self._cond:
            task = self._get(task_id)
        seen = -1
        while True:
            with self._cond:
                while task.version == seen:
                    if not active():
                        return
                    self._cond.wait(timeout=1.0)
                view = self._view(task)
                seen = view.version
            yield view
            if view.done:
                return

    def wake_watchers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ stopping

    def cancel(self, task_id: str) -> TaskView:
        with self._cond:
            task = self._get(task_id)
            if task.state == QUEUED:
                self._queue.remove(task)
                task.state, task.finished = CANCELLED, time.time()
                task.error = "cancelled before it started"
                log.info("task %s cancelled while queued: %s", task.id, task.description)
                for waiting in self._queue:
                    self._changed(waiting)
            elif task.state == RUNNING and not task.cancel_requested:
                task.cancel_requested = True
                assert task.job is not None
                task.job.cancel()
                log.info("task %s: cancel requested", task.id)
            self._changed(task)
            return self._view(task)

    def shutdown(
        self, grace: float, *, cancel_wait: float = 60.0
    ) -> tuple[list[TaskView], list[TaskView]]:
        """Take no new tasks; let running ones finish for ``grace`` seconds, then cancel the
        rest. Returns (tasks that finished on their own, tasks that were cancelled)."""
        with self._cond:
            self._closing = True
            dropped = list(self._queue)
            for task in dropped:
                self._queue.remove(task)
                task.state, task.finished = CANCELLED, time.time()
                task.error = "cancelled: the server shut down before it started"
                self._changed(task)
            running = [t for t in self._tasks.values() if t.state == RUNNING]
            deadline = time.monotonic() + grace
            while any(t.state == RUNNING for t in running):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            finished = [t for t in running if t.state in FINISHED]
            stopped = [t for t in running if t.state not in FINISHED]
            for task in stopped:
                self.cancel(task.id)
            deadline = time.monotonic() + cancel_wait
            while any(t.state not in FINISHED for t in stopped):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            return (
                [self._view(t) for t in finished],
                [self._view(t) for t in dropped + stopped],
            )
