"""Jobs and the backup caps: the service layer's one place that decides when work starts.

A job of the service runs in its own thread. Backups are held to two caps: at most
``max_backups`` running in all and at most ``max_backups_per_volume`` of one volume (1 by
default, so two backups of one volume never interleave). A backup that does not fit waits
in a queue in state "queued" with its ``queue_position`` (1 = next to start); a queued job
that cannot start yet does not hold up a later one that can. Cancelling a queued job ends
it CANCELLED without it ever running. Every other job starts at once.

The caps belong to the service, so every front end in the process (CLI, TUI, gRPC API)
shares one queue.

Front ends show a job as a ``JobView`` (models.py), built here by ``view_of`` with the one
``summary()`` of its outcome; ``VerifyStates`` holds what the last verify of each point said.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, LaminaError, UsageError
from ..progress import Progress
from ..units import format_size, plural
from .models import (
    CopyReport,
    ExtractReport,
    ForgetReport,
    JobView,
    PointInfo,
    PruneReport,
    RestoreReport,
    VerifyReport,
)

if TYPE_CHECKING:
    from ..engine.pipelines import VolumeRef

DEFAULT_MAX_BACKUPS = 2
DEFAULT_MAX_BACKUPS_PER_VOLUME = 1
CANCELLED_WHILE_QUEUED = "cancelled before it started"


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"  # how a view shows a running job asked to stop
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class Job:
    """A long operation running in a thread: progress events, a result or an error, cancel()."""

    kind: str
    description: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = JobState.QUEUED
    progress: Progress | None = None
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    log: list[str] = field(default_factory=list)
    volume: VolumeRef | None = None  # set for a backup: the volume it counts against
    point: str = ""  # the point it restores, verifies, extracts from, deletes or consolidates
    queue_position: int = 0  # 1 = next to start; 0 when not waiting for a backup slot
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _listeners: list[Callable[[Job], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _runner: JobRunner | None = field(default=None, repr=False)

    def cancel(self) -> None:
        self._cancel.set()
        self._log("cancel requested")
        if self._runner is not None:
            self._runner.drop(self)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def subscribe(self, listener: Callable[[Job], None]) -> Callable[[], None]:
        """Call ``listener(job)`` on every change. Returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self)
            except Exception:  # a broken listener must not break the job
                pass

    def _log(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def _on_progress(self, p: Progress) -> None:
        self.progress = p
        if p.message:
            self._log(p.message)
        self._notify()

    def _run(self, fn: Callable[[Job], Any], on_end: Callable[[], None] | None = None) -> None:
        """Run ``fn`` in this thread; ``on_end`` runs before the job shows as done, so a
        slot it held is free by the time a waiter wakes."""
        self.state = JobState.RUNNING
        self.started = self.started or time.time()
        self._log(f"started: {self.description}")
        self._notify()
        try:
            if self.cancel_requested:  # cancelled between leaving the queue and starting
                raise Cancelled(CANCELLED_WHILE_QUEUED)
            self.result = fn(self)
            self.state = JobState.SUCCEEDED
            self._log("succeeded")
        except Cancelled as e:
            self.state = JobState.CANCELLED
            self.error = str(e)
            self._log(str(e))
        except LaminaError as e:
            self.state = JobState.FAILED
            self.error = str(e)
            self._log(f"failed: {e}")
        except Exception as e:  # an engine bug: keep the trace in the job log, not on the screen
            self.state = JobState.FAILED
            self.error = f"internal error: {type(e).__name__}: {e}"
            self._log(traceback.format_exc())
        finally:
            if self.progress is not None and self.state != JobState.SUCCEEDED:
                # The last phase is over: a cancelled backup is no longer "backing up".
                self.progress = replace(self.progress, phase=self.state, rate=0.0, eta=None)
            self.finished = time.time()
            if on_end is not None:
                on_end()
            self._done.set()
            self._notify()


@dataclass(frozen=True)
class BackupCaps:
    max_backups: int = DEFAULT_MAX_BACKUPS
    max_backups_per_volume: int = DEFAULT_MAX_BACKUPS_PER_VOLUME

    def __post_init__(self) -> None:
        if self.max_backups < 1 or self.max_backups_per_volume < 1:
            raise UsageError("the backup caps (at most N backups, N per volume) must be at least 1")


class JobRunner:
    """Starts jobs in threads: at once, or, for backups, once they fit the caps.

    Listeners are never called while the runner's lock is held, so a listener may call
    back into the runner (cancel a job, start another) without a deadlock.
    """

    def __init__(self, caps: BackupCaps | None = None) -> None:
        self._caps = caps or BackupCaps()
        self._lock = threading.Lock()
        self._queue: list[tuple[Job, Callable[[Job], Any]]] = []
        self._running_backups = 0
        self._running_by_volume: Counter[VolumeRef] = Counter()

    @property
    def caps(self) -> BackupCaps:
        return self._caps

    def set_caps(self, caps: BackupCaps) -> None:
        """New caps; raised ones start waiting backups at once."""
        with self._lock:
            self._caps = caps
            changed = self._schedule()
        _notify_all(changed)

    def start(self, job: Job, fn: Callable[[Job], Any]) -> Job:
        """Run ``job`` now, or queue it when it is a backup (``job.volume`` set) that does
        not fit the caps."""
        job._runner = self
        with self._lock:
            if self._fits(job):
                self._launch(job, fn)
            else:
                self._queue.append((job, fn))
                job.queue_position = len(self._queue)
                job._log(f"queued at position {job.queue_position}: the backup caps are reached")
        return job

    def drop(self, job: Job) -> None:
        """End a queued job CANCELLED without running it; a no-op for any other job."""
        with self._lock:
            entry = next((e for e in self._queue if e[0] is job), None)
            if entry is None:
                return
            self._queue.remove(entry)
            job.queue_position = 0
            job.state, job.error, job.finished = (
                JobState.CANCELLED,
                CANCELLED_WHILE_QUEUED,
                time.time(),
            )
            job._log(CANCELLED_WHILE_QUEUED)
            moved = self._renumber()
        job._done.set()
        _notify_all([job, *moved])

    def queued(self) -> list[Job]:
        with self._lock:
            return [job for job, _ in self._queue]

    def _fits(self, job: Job) -> bool:
        if job.volume is None:
            return True
        return (
            self._running_backups < self._caps.max_backups
            and self._running_by_volume[job.volume] < self._caps.max_backups_per_volume
        )

    def _launch(self, job: Job, fn: Callable[[Job], Any]) -> None:
        job.queue_position = 0
        job.state, job.started = JobState.RUNNING, time.time()  # running from this call on
        on_end: Callable[[], None] | None = None
        if job.volume is not None:
            volume = job.volume
            self._running_backups += 1
            self._running_by_volume[volume] += 1

            def on_end() -> None:
                self._release(volume)

        threading.Thread(
            target=job._run, args=(fn, on_end), name=f"lamina-job-{job.id}", daemon=True
        ).start()

    def _release(self, volume: VolumeRef) -> None:
        with self._lock:
            self._running_backups -= 1
            self._running_by_volume[volume] -= 1
            changed = self._schedule()
        _notify_all(changed)

    def _schedule(self) -> list[Job]:
        """Start every queued job that fits now, oldest first. Returns the jobs still
        waiting whose positions moved (under the lock: the caller notifies them)."""
        started = False
        for entry in list(self._queue):
            job, fn = entry
            if self._fits(job):
                self._queue.remove(entry)
                self._launch(job, fn)
                started = True
        return self._renumber() if started else []

    def _renumber(self) -> list[Job]:
        moved = []
        for position, (job, _) in enumerate(self._queue, start=1):
            if job.queue_position != position:
                job.queue_position = position
                moved.append(job)
        return moved


def _notify_all(jobs: list[Job]) -> None:
    for job in jobs:
        job._notify()


# ---------------------------------------------------------------------------- views


def summary(kind: str, state: str, error: str | None, result: Any, point: str = "") -> str:
    """One line on a finished job's outcome ("" while it runs): what every front end shows."""
    if state not in JobState.FINISHED:
        return ""
    if state != JobState.SUCCEEDED:
        return error or state
    if kind == "consolidate" and isinstance(result, PointInfo):
        parent = f" (now on {result.parent})" if result.parent else " (now a full point)"
        return f"consolidated point {result.id}{parent}"
    if isinstance(result, PointInfo):
        return (
            f"point {result.id}: read {format_size(result.bytes_read)}, "
            f"stored {format_size(result.bytes_stored)}, "
            f"deduplicated {format_size(result.bytes_deduplicated)}"
        )
    if isinstance(result, RestoreReport):
        return f"restored {format_size(result.bytes_written)} to {result.target}"
    if isinstance(result, VerifyReport):
        if result.ok:
            return (
                f"{plural(result.points, 'point')}, {plural(result.pieces, 'piece')} checked, "
                "no problem found"
            )
        return f"{plural(len(result.problems), 'problem')}: {result.problems[0]}"
    if isinstance(result, ExtractReport):
        text = (
            f"extracted {plural(result.files, 'file')}, {plural(result.directories, 'folder')}, "
            f"{format_size(result.bytes)} to {result.target}"
        )
        if result.skipped:
            first = result.skipped[0]
            text += f"; skipped {len(result.skipped)}: {first.path}: {first.reason}"
        return text
    if isinstance(result, ForgetReport):
        kept = sum(1 for d in result.decisions if d.keep)
        if result.dry_run:
            removable = len(result.decisions) - kept
            return f"dry run: would keep {plural(kept, 'point')}, remove {removable}"
        return f"kept {plural(kept, 'point')}, removed {len(result.removed)}"
    if isinstance(result, PruneReport):
        verb = "would reclaim" if result.dry_run else "reclaimed"
        return (
            f"{verb} {format_size(result.bytes_reclaimed)} of {format_size(result.bytes_total)}: "
            f"{plural(result.packs_deleted, 'pack')} deleted, {result.packs_repacked} repacked"
        )
    if isinstance(result, CopyReport):
        return (
            f"copied {plural(len(result.copied), 'point')} to {result.destination}, "
            f"{len(result.present)} already there; uploaded {format_size(result.bytes_uploaded)}"
        )
    if kind == "restore" and isinstance(result, dict):  # a delta restore
        return (
            f"restored onto {result.get('target')}: wrote {format_size(result['bytes_written'])}"
            f" ({plural(result['blocks_differing'], 'block')} differed), downloaded "
            f"{format_size(result['bytes_downloaded'])}"
        )
    if kind == "delete" and isinstance(result, list):
        folded = f"; its data folded into {', '.join(result)}" if result else ""
        return f"deleted point {point}{folded}"
    return "done"


def job_point(job: Job) -> str:
    """The point a job concerns: the one it made once it made one, else its subject."""
    if job.state == JobState.SUCCEEDED and isinstance(job.result, PointInfo):
        return job.result.id
    return job.point


def view_of(job: Job, *, log_lines: int | None = None, cancelling: bool = False) -> JobView:
    """The job now. ``log_lines``: keep only the last ones, without multi-line entries
    (tracebacks stay in the job's own log); ``cancelling``: a cancel was asked elsewhere."""
    log = list(job.log)
    if log_lines is not None:
        log = [line for line in log if "\n" not in line.strip()][-log_lines:]
    state = job.state
    if state == JobState.RUNNING and (cancelling or job.cancel_requested):
        state = JobState.CANCELLING
    succeeded = job.state == JobState.SUCCEEDED
    point = job_point(job)
    return JobView(
        id=job.id,
        kind=job.kind,
        description=job.description,
        state=state,
        queue_position=job.queue_position if state == JobState.QUEUED else 0,
        progress=job.progress,
        error=job.error,
        summary=summary(job.kind, job.state, job.error, job.result, point),
        log=tuple(log),
        volume=job.volume,
        point=point or None,
        created=job.created,
        started=job.started,
        ended=job.finished if job.state in JobState.FINISHED else None,
        result=job.result if succeeded else None,
    )


class VerifyStates:
    """What the last verify of each point said: "verifying", "ok" or "corrupt" (held by the
    service, so every front end shows the same)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}

    def get(self, point_id: str) -> str:
        with self._lock:
            return self._states.get(point_id, "")

    def follow(self, point_id: str, job: Job) -> None:
        """Track a verify of one point from now to its end (cancelled: as if never run)."""
        with self._lock:
            self._states[point_id] = "verifying"

        def record(j: Job) -> None:
            if not j.done:
                return
            state = ""
            if j.state == JobState.SUCCEEDED and isinstance(j.result, VerifyReport):
                state = "ok" if j.result.ok else "corrupt"
            elif j.state == JobState.FAILED:
                state = "corrupt"
            with self._lock:
                if state:
                    self._states[point_id] = state
                else:
                    self._states.pop(point_id, None)

        job.subscribe(record)
        if job.done:
            record(job)
