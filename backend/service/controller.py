"""`lamina controller --local`: runs the catalog's due schedules over the local cluster.

Every pass: find the due schedules, claim each slot in the catalog (a row-level
compare-and-set on ``next_run``: two controllers never run one slot twice), and run it in
a thread through a Service with origin ``controller``, so the catalog records each job. A
backup schedule's run is a backup job of its local volume (snapshot, CBT, backup), then a
forget job by its retention, then (with ``copy_to``) a copy job of the volume's points to
that repository; a prune schedule's run is a prune job. A run that fails is
recorded, with its one-line error, on its jobs and on the schedule, and the other schedules
go on. docs/schedules.md has the rules.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..catalog import Catalog, JobRecord, default_catalog_url
from ..catalog.process import current_process
from ..catalog.records import ScheduleRow
from ..catalog.schedules import (
    claim_slot,
    claimer_alive,
    claimer_identity,
    due_schedules,
    next_run_of,
    reap_runs,
    update_schedule,
)
from ..errors import LaminaError
from .clusters import LOCAL
from .jobs import Job, JobState
from .schedules import PRUNE, ScheduleInfo, next_slot, policy_of

ORIGIN = "controller"


@dataclass
class _Run:
    schedule: str
    thread: threading.Thread | None = None
    jobs: list[Job] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: bool = False

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs.append(job)
            if self.cancelled:
                job.cancel()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            for job in self.jobs:
                job.cancel()


class Controller:
    """Runs due schedules until ``stop`` is set; then cancels its running jobs and waits."""

    def __init__(
        self,
        catalog_url: str | None = None,
        *,
        poll: float = 1.0,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.catalog_url = catalog_url or default_catalog_url()
        self.poll = poll
        self.say = say
        self.identity = claimer_identity()
        self._runs: dict[str, _Run] = {}
        self._runs_lock = threading.Lock()
        self.catalog = Catalog.open(self.catalog_url)
        for name in reap_runs(self.catalog):
            say(f"{name}: its last run's controller ended without recording an end")

    def close(self) -> None:
        self.catalog.close()

    def serve(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.tick()
                    wait = self._until_next()
                except LaminaError as e:  # the catalog is down: say so, try again
                    self.say(f"schedules not read: {e}")
                    wait = self.poll
                stop.wait(wait)
        finally:
            self.shutdown()

    def _until_next(self) -> float:
        upcoming = next_run_of(self.catalog)
        delay = None if upcoming is None else upcoming - time.time()
        if delay is None or delay <= 0:  # none, or one due whose last run still goes
            return self.poll
        return max(0.05, min(self.poll, delay))

    def tick(self, now: float | None = None) -> list[str]:
        """Claim and start every due slot; returns the names of the schedules started."""
        at = now if now is not None else time.time()
        started = []
        for row in due_schedules(self.catalog, at):
            with self._runs_lock:
                if row.name in self._runs:  # its previous run is still going: not yet
                    continue
            if row.last_state == "running" and claimer_alive(row.claimed_by):
                continue  # ... in another controller on this machine
            new_next = next_slot(row, at)
            if not claim_slot(self.catalog, row.name, row.next_run, new_next, self.identity, at):
                continue  # another controller claimed this slot
            missed = self._missed(row, at)
            if missed > 1:
                self.say(f"{row.name}: {missed} missed slots, run once now")
            run = _Run(row.name)
            run.thread = threading.Thread(
                target=self._run, args=(row, run), name=f"schedule {row.name}", daemon=True
            )
            with self._runs_lock:
                self._runs[row.name] = run
            run.thread.start()
            started.append(row.name)
        return started

    @staticmethod
    def _missed(row: ScheduleRow, now: float) -> int:
        """How many slots had come by ``now`` (more than one: a catch-up after downtime)."""
        count, slot = 0, row.next_run
        while slot <= now and count < 1000:
            count += 1
            slot = next_slot(row, slot)
        return count

    def running(self) -> list[str]:
        with self._runs_lock:
            return sorted(self._runs)

    def shutdown(self) -> None:
        """Cancel the running jobs and wait for them: their locks are released on the way."""
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        for run in runs:
            if run.thread is not None:
                run.thread.join()

    # ------------------------------------------------------------------ one run

    def _run(self, row: ScheduleRow, run: _Run) -> None:
        info = ScheduleInfo.of(row)
        # The slot, exactly: what tests and operators match across controllers' logs.
        self.say(f"{info.name}: {info.kind} started (slot {row.next_run!r})")
        state, error = JobState.FAILED, None
        try:
            state, error = self._run_jobs(info, run)
        except LaminaError as e:  # before any job could start (a password file gone ...)
            error = str(e)
            self._record_failed(info, error)
        except Exception as e:  # a bug must not stop the other schedules
            error = f"internal error: {type(e).__name__}: {e}"
            self._record_failed(info, error)
        finally:
            jobs = " ".join(j.id for j in run.jobs) or None
            try:
                update_schedule(
                    self.catalog, info.name, last_state=state, last_error=error, last_jobs=jobs
                )
            except LaminaError as e:  # removed meanwhile, or the catalog is down
                self.say(f"{info.name}: not recorded on the schedule: {e}")
            with self._runs_lock:
                self._runs.pop(info.name, None)
        self.say(f"{info.name}: {info.kind} {state}" + (f": {error}" if error else ""))

    def _run_jobs(self, info: ScheduleInfo, run: _Run) -> tuple[str, str | None]:
        from .service import Service, read_password_file

        service = Service(
            info.repository,
            password=read_password_file(info.password_file),
            local_root=info.local_root,
            catalog=self.catalog_url,
            origin=ORIGIN,
        )
        try:
            if info.kind == PRUNE:
                return self._wait(run, service.start_prune())
            assert info.volume is not None
            namespace, name = info.volume.split("/", 1)
            volume = f"{LOCAL}/{namespace}/{name}"
            state, error = self._wait(run, service.start_volume_backup(LOCAL, namespace, name))
            policy = policy_of(info.retention)
            if state == JobState.SUCCEEDED and not policy.empty:
                state, error = self._wait(run, service.start_forget(policy, volume=volume))
            if state != JobState.SUCCEEDED or info.copy_to is None:
                return state, error
            # The copy step: what the other repository lacks of the volume, a copy job.
            try:
                copy = service.start_copy(
                    info.copy_to,
                    volume=volume,
                    other_password=read_password_file(info.copy_password_file),
                )
            except LaminaError as e:  # the other repository does not open: a failed copy
                self._record_failed(info, str(e), kind="copy")
                return JobState.FAILED, str(e)
            return self._wait(run, copy)
        finally:
            service.close()  # also writes the jobs' ends to the catalog

    @staticmethod
    def _wait(run: _Run, job: Job) -> tuple[str, str | None]:
        run.add(job)
        job.wait()
        return job.state, job.error

    def _record_failed(self, info: ScheduleInfo, error: str, *, kind: str | None = None) -> None:
        """A run that failed before its job could start is still a failed job in the history."""
        me = current_process()
        now = time.time()
        volume = f"{LOCAL}/{info.volume}" if info.volume else None
        record = JobRecord(
            id=uuid.uuid4().hex[:12],
            kind=kind or info.kind,
            state=JobState.FAILED,
            description=f"scheduled {kind or info.kind} {info.name}",
            repository=info.repository,
            volume=volume,
            created_at=now,
            started_at=now,
            ended_at=now,
            error=error,
            origin=ORIGIN,
            host=me.host,
            pid=me.pid,
            boot_id=me.boot_id,
            process_start=me.start,
        )
        try:
            self.catalog.record_job(record, error)
        except LaminaError as e:
            self.say(f"{info.name}: not recorded in the job history: {e}")
