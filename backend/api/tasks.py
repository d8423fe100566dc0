"""Tasks: the service layer's Jobs as the API shows them, with ids and watch streams.

The backup caps and the queue belong to the service (backend/jobs.py): a backup started
here that does not fit them comes back as a queued job, and its task shows it with its
queue position. This module only adds what the API needs on top: the tasks of this
server, snapshots that many watchers can read, and a clean stop.

Every change of a task (state, progress, queue position) bumps its ``version`` and wakes
the watchers, who then take a ``JobView`` (the service's one view of a job) of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from ..service import Job, JobState, JobView, shown, summary, view_of
from ..service.rpc_errors import ShuttingDown, TaskNotFound

log = logging.getLogger("lamina.api.tasks")

LOG_LINES_KEPT = 200
FINISHED_TASKS_KEPT = 1000


@dataclass
class _Task:
    job: Job
    state: str = JobState.QUEUED
    error: str | None = None  # a reason of the server's own (it shut down), over the job's
    version: int = 0
    cancel_requested: bool = False
    unsubscribe: Callable[[], None] | None = None

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def description(self) -> str:
        return self.job.description


def _state(job: Job) -> str:
    if job.done:
        return job.state if job.state in JobState.FINISHED else JobState.FAILED
    return JobState.QUEUED if job.state == JobState.QUEUED else JobState.RUNNING


class TaskManager:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._tasks: dict[str, _Task] = {}
        self._closing = False

    # ------------------------------------------------------------------ submitting

    def submit(self, launch: Callable[[], Job]) -> JobView:
        """Start the service's job (it may come back queued). A launch that fails at once raises."""
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new tasks")
        job = launch()  # outside the lock: the service may notify listeners while it starts
        with self._cond:
            if self._closing:  # the server began to stop while the job was starting
                job.cancel()
                raise ShuttingDown("the server is shutting down and takes no new tasks")
            task = _Task(job=job)
            description = job.description
            self._tasks[task.id] = task
            task.unsubscribe = job.subscribe(lambda j: self._on_job(task))
            self._on_job(task)
            if task.state == JobState.QUEUED:
                log.info(
                    "task %s queued at position %d: %s",
                    task.id,
                    job.queue_position,
                    description,
                )
            elif task.state == JobState.RUNNING:
                log.info("task %s started: %s", task.id, description)
            self._forget_old()
            return self._view(task)

    def _on_job(self, task: _Task) -> None:
        with self._cond:
            if task.state in JobState.FINISHED:
                return
            job = task.job
            was, task.state = task.state, _state(job)
            if was == JobState.QUEUED and task.state == JobState.RUNNING and task.version:
                log.info("task %s started: %s", task.id, task.description)
            if task.state in JobState.FINISHED:
                task.error = task.error or job.error
                if task.unsubscribe is not None:
                    task.unsubscribe()
                log.info(
                    "task %s %s: %s%s",
                    task.id,
                    task.state,
                    task.description,
                    f" ({task.error})" if task.error else "",
                )
            self._changed(task)

    def _changed(self, task: _Task) -> None:
        task.version += 1
        self._cond.notify_all()

    def _forget_old(self) -> None:
        finished = [t for t in self._tasks.values() if t.state in JobState.FINISHED]
        for task in finished[: max(0, len(finished) - FINISHED_TASKS_KEPT)]:
            del self._tasks[task.id]

    # ------------------------------------------------------------------ reading

    def _get(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task {shown(task_id)} on this server")
        return task

    def _view(self, task: _Task) -> JobView:
        view = view_of(task.job, log_lines=LOG_LINES_KEPT, cancelling=task.cancel_requested)
        if task.state in JobState.FINISHED and task.error and task.error != view.error:
            text = summary(view.kind, task.state, task.error, view.result, view.point or "")
            view = replace(view, error=task.error, summary=text)
        return view

    def get(self, task_id: str) -> JobView:
        with self._cond:
            return self._view(self._get(task_id))

    def all(self) -> list[JobView]:
        with self._cond:
            return [self._view(t) for t in self._tasks.values()]

    def watch(self, task_id: str, active: Callable[[], bool]) -> Iterator[JobView]:
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
                seen = task.version
            yield view
            if view.finished:
                return

    def wake_watchers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ stopping

    def cancel(self, task_id: str) -> JobView:
        with self._cond:
            task = self._get(task_id)
            if task.state not in (JobState.QUEUED, JobState.RUNNING) or task.cancel_requested:
                return self._view(task)
            task.cancel_requested = True
            if task.state == JobState.QUEUED:
                log.info("task %s cancelled while queued: %s", task.id, task.description)
            else:
                log.info("task %s: cancel requested", task.id)
        task.job.cancel()  # a queued job ends at once, without running
        with self._cond:
            self._on_job(task)
            return self._view(task)

    def shutdown(
        self, grace: float, *, cancel_wait: float = 60.0
    ) -> tuple[list[JobView], list[JobView]]:
        """Take no new tasks; let running ones finish for ``grace`` seconds, then cancel the
        rest. Returns (tasks that finished on their own, tasks that were cancelled)."""
        with self._cond:
            self._closing = True
            dropped = [t for t in self._tasks.values() if t.state == JobState.QUEUED]
            for task in dropped:
                task.error = "cancelled: the server shut down before it started"
                self.cancel(task.id)
            running = [t for t in self._tasks.values() if t.state == JobState.RUNNING]
            deadline = time.monotonic() + grace
            while any(t.state == JobState.RUNNING for t in running):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            finished = [t for t in running if t.state in JobState.FINISHED]
            stopped = [t for t in running if t.state not in JobState.FINISHED]
            for task in stopped:
                self.cancel(task.id)
            deadline = time.monotonic() + cancel_wait
            while any(t.state not in JobState.FINISHED for t in stopped):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            return (
                [self._view(t) for t in finished],
                [self._view(t) for t in dropped + stopped],
            )
