"""Every job of the service, written to the job-history catalog (backend/catalog/).

The service hands each job to ``JobRecorder.track`` as it starts it, so the CLI, the TUI
and the gRPC API record the same way. Writes go through one background thread: a job
never waits for the catalog, and a catalog that is down costs a warning, never the job.
A backup recorded nowhere is filled in later from the repository (``reconcile``).

Into an SQLite catalog that can be written, the thread writes the spool beside it
(catalog/spool.py) instead, which the next opener of the catalog moves in: a process that
only runs a job never loads the database layer.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..catalog import CatalogError, HistoryQuery, JobRecord, open_catalog
from ..catalog.process import current_process
from ..catalog.records import HEARTBEAT_EVERY, LIVE_STATES, OFF, JobEvent
from ..catalog.spool import Spool
from ..display import printable
from .accounting import RequestCounts
from .jobs import Job, JobState

if TYPE_CHECKING:
    from ..catalog import Catalog
    from .models import PointInfo

log = logging.getLogger("lamina.catalog")

ORIGINS = ("cli", "tui", "api", "controller")
_RETRY_OPEN_AFTER = 60.0
_FLUSH_TIMEOUT = 15.0


def figures(job: Job) -> dict[str, int]:
    """bytes_read, bytes_stored and bytes_deduplicated of a job's result, where it has them."""
    result = job.result
    stats: Any = getattr(result, "stats", None)
    if stats is None:
        stats = result if isinstance(result, dict) else {}
    out = {
        name: int(stats.get(name, 0) or 0)
        for name in ("bytes_read", "bytes_stored", "bytes_deduplicated")
        if isinstance(stats, dict)
    }
    checked = getattr(result, "bytes_checked", None)
    if checked is not None and not out.get("bytes_read"):
        out["bytes_read"] = int(checked)
    return out


def _recorded_state(job: Job) -> str:
    # A finished state shows only once the job is done (its result set).
    return job.state if job.done or job.state not in JobState.FINISHED else JobState.RUNNING


class JobRecorder:
    def __init__(
        self,
        catalog_url: str | None,
        *,
        repository: str,
        origin: str = "cli",
        counts: Callable[[Job], RequestCounts | None] = lambda job: None,
    ) -> None:
        self.catalog_url = catalog_url
        self.enabled = (catalog_url or "").lower() not in OFF
        self.repository = repository
        self.origin = origin
        self._counts = counts
        self._catalog: Catalog | None = None
        self._failed_at: float | None = None
        self.problem: str | None = None  # why recording failed, for the front end to warn
        self._queue: queue.Queue[tuple[JobRecord, str, float] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._tracked: dict[str, Job] = {}
        self._written: dict[str, str] = {}  # job id -> last state queued
        self._spool = Spool.for_catalog(catalog_url) if self.enabled else None
        self._spooled: dict[str, tuple[JobRecord, list[JobEvent]]] = {}

    # ------------------------------------------------------------------ the service's side

    def track(self, job: Job) -> None:
        """Record ``job`` now and at every change of its state."""
        if not self.enabled:
            return
        with self._lock:
            self._tracked[job.id] = job
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_loop, name="lamina-catalog", daemon=True
                )
                self._thread.start()
                # A process that ends without closing its service still writes its jobs' ends.
                atexit.register(self.close)
        self._changed(job)
        job.subscribe(self._changed)

    def close(self) -> None:
        """Write the end of every finished job, then stop; waits a few seconds at most."""
        with self._lock:
            thread, self._thread = self._thread, None
            jobs = list(self._tracked.values())
        if thread is None:
            return
        for job in jobs:
            if job.done:
                self._changed(job)
        self._queue.put(None)
        thread.join(_FLUSH_TIMEOUT)
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _changed(self, job: Job) -> None:
        # Every progress event calls this: queue a write only when the state moved.
        state = _recorded_state(job)
        with self._lock:
            if self._written.get(job.id) == state:
                return
            self._written[job.id] = state
        message = (job.error or state) if state in JobState.FINISHED else state
        self._queue.put((self._record(job, state), message, time.time()))

    def record_of(self, job: Job) -> JobRecord:
        """The record the catalog gets for ``job`` in its present state."""
        return self._record(job, _recorded_state(job))

    def _record(self, job: Job, state: str) -> JobRecord:
        me = current_process()
        record = JobRecord(
            id=job.id,
            kind=job.kind,
            state=state,
            description=job.description,
            repository=self.repository,
            volume=str(job.volume) if job.volume is not None else None,
            created_at=job.created,
            started_at=job.started,
            ended_at=job.finished if state in JobState.FINISHED else None,
            heartbeat_at=time.time(),
            error=job.error if state in JobState.FINISHED else None,
            origin=self.origin,
            host=me.host,
            pid=me.pid,
            boot_id=me.boot_id,
            process_start=me.start,
        )
        if state in JobState.FINISHED:
            for name, value in figures(job).items():
                setattr(record, name, value)
            point = getattr(job.result, "id", None)
            if job.kind == "backup" and isinstance(point, str):
                record.point = point
                record.volume = str(getattr(job.result, "volume", record.volume))
        counts = self._counts(job)
        if counts is not None:
            record.requests = dict(counts.by_op)
            record.retries = counts.retries
            record.bytes_up = counts.bytes_up
            record.bytes_down = counts.bytes_down
            record.cost_usd = counts.cost_usd
        return record

    # ------------------------------------------------------------------ the writer thread

    def _open(self) -> Catalog | None:
        if self._catalog is not None:
            return self._catalog
        if self._failed_at is not None and time.monotonic() - self._failed_at < _RETRY_OPEN_AFTER:
            return None
        try:
            self._catalog = open_catalog(self.catalog_url)
            self._failed_at = None
        except Exception as e:
            self._down(e)
        return self._catalog

    def _down(self, e: BaseException) -> None:
        self._failed_at = time.monotonic()
        line = str(e) if isinstance(e, CatalogError) else f"{type(e).__name__}: {e}"
        if self.problem is None:
            log.info("job history not recorded: %s", printable(line))
        self.problem = line

    def _write_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=HEARTBEAT_EVERY)
            except queue.Empty:
                self._heartbeat()
                continue
            if item is None:
                return
            record, message, at = item
            if self._spool is not None and self._to_spool(record, message, at):
                continue
            catalog = self._open()
            if catalog is None:
                continue  # lost: a backup's point is reconciled from the repository later
            try:
                catalog.record_job(record, message, at)
            except Exception as e:
                self._down(e)
                catalog.close()
                self._catalog = None

    def _to_spool(self, record: JobRecord, message: str, at: float) -> bool:
        """Write the job's record and every event so far to the spool; False (and the
        catalog itself from now on) when the spool cannot be written."""
        assert self._spool is not None
        _, events = self._spooled.get(record.id, (record, []))
        events.append(JobEvent(at, record.state, message))
        self._spooled[record.id] = (record, events)
        try:
            self._spool.write(record, events)
        except (OSError, ValueError) as e:
            # Its earlier versions, where written, move in when the catalog is opened.
            log.debug("job spool not written, writing the catalog: %s", e)
            self._spool = None
            self._spooled.clear()
            return False
        if record.state not in LIVE_STATES:
            del self._spooled[record.id]
        return True

    def _heartbeat(self) -> None:
        with self._lock:
            running = [j.id for j in self._tracked.values() if not j.done]
        if running and self._spool is not None:
            now = time.time()
            for job_id in running:
                if job_id in self._spooled:
                    record, events = self._spooled[job_id]
                    record.heartbeat_at = now
                    try:
                        self._spool.write(record, events)
                    except (OSError, ValueError) as e:
                        log.debug("job spool heartbeat not written: %s", e)
            return
        if not running or self._catalog is None:
            return
        try:
            self._catalog.heartbeat(running)
        except Exception as e:
            self._down(e)


def reconcile(catalog: Catalog, repository: str, points: Iterable[PointInfo]) -> int:
    """Add a succeeded backup for every point of the repository that no job recorded (made
    while the catalog was down, or by a lamina without one). Returns how many were added."""
    known = catalog.known_points()
    added = 0
    for p in points:
        if p.id in known:
            continue
        created = _timestamp(p.created)
        stats = p.stats
        catalog.record_job(
            JobRecord(
                id=f"r{p.id[:31]}",
                kind="backup",
                state=JobState.SUCCEEDED,
                description=f"back up {p.volume} (found in the repository)",
                repository=repository,
                volume=str(p.volume),
                point=p.id,
                created_at=created,
                started_at=created,
                ended_at=created + float(stats.get("duration_seconds", 0) or 0),
                bytes_read=int(stats.get("bytes_read", 0) or 0),
                bytes_stored=int(stats.get("bytes_stored", 0) or 0),
                bytes_deduplicated=int(stats.get("bytes_deduplicated", 0) or 0),
                origin="repository",
            ),
            "reconciled from the repository",
        )
        added += 1
    return added


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def read_history(
    query: HistoryQuery | None = None, *, catalog: str | None = None
) -> list[JobRecord]:
    """Jobs from the catalog (``catalog``, $LAMINA_CATALOG or the default), newest first,
    without a repository to reconcile with. Raises CatalogError in one line."""
    opened = open_catalog(catalog)
    try:
        return opened.history(query)
    finally:
        opened.close()
