"""Repository locks: leases held as objects, so that prune never races a backup.

Protocol (docs/format.md, "Concurrency"):

* A lock is an object ``locks/<id>`` holding JSON: kind (shared or exclusive), purpose,
  host, pid, created and ``expires`` (seconds since the epoch). Its holder rewrites it every
  ``REFRESH`` seconds, pushing ``expires`` forward; a lock whose ``expires`` has passed (by
  more than ``SKEW`` of clock slack) belongs to a dead process and is ignored.
* To take a lock: write your own lock object first, then list every lock. A shared lock
  conflicts with a live exclusive lock; an exclusive lock conflicts with any other live
  lock. On conflict, delete your object and retry after a random pause, or give up.
  Because each side writes before it reads, two conflicting lockers cannot both miss each
  other: at least one sees the other and backs off.
* A lock of a process that no longer runs on this very host is stale at once (restic does
  the same), so a crashed backup does not hold up a prune on the same machine.
* Backups, restores, verifies and mounts take shared locks; prune, forget, delete and
  consolidate take exclusive locks.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import LaminaError
from .repository import Repository
from .storage import ObjectNotFound, StorageError
from .storage.metering import in_context

log = logging.getLogger("lamina.locks")

TTL = 300.0  # a lock lives this long without a refresh
REFRESH = 60.0
SKEW = 60.0  # clock slack between hosts before a lock counts as stale
SHARED = "shared"
EXCLUSIVE = "exclusive"


# Locks this process holds: whatever way it ends (return, error, Ctrl-C, a SIGTERM turned into
# an exit), the ones still held are removed at exit instead of lingering until they expire.
_held: set[Lock] = set()
_held_lock = threading.Lock()


def release_all() -> int:
    """Release every lock this process still holds. Returns how many there were."""
    with _held_lock:
        held = list(_held)
    for lock in held:
        try:
            lock.release()
        except Exception as e:  # at exit nothing is left to report to: say it, then go on
            log.warning("cannot remove repository lock %s: %s (it expires by itself)", lock.key, e)
    return len(held)


atexit.register(release_all)


class RepositoryLocked(LaminaError):
    """Another process holds a conflicting lock."""


class LockLost(LaminaError):
    """Our lock expired or was removed: what we read under it may no longer hold."""


@dataclass(frozen=True)
class LockInfo:
    key: str
    kind: str
    purpose: str
    host: str
    pid: int
    created: float
    expires: float

    @property
    def stale(self) -> bool:
        """Expired, or held by a process of this host that no longer exists."""
        if self.expires + SKEW < time.time():
            return True
        return self.host == socket.gethostname() and self.pid > 0 and not _alive(self.pid)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.created))
        state = "stale" if self.stale else "live"
        return f"{self.kind} lock for {self.purpose} by pid {self.pid} on {self.host} since {since} ({state})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process has such a pid
        return False
    except PermissionError:
        return True
    return True


def list_locks(repo: Repository) -> list[LockInfo]:
    out = []
    for info in repo.storage.list("locks/"):
        try:
            data = json.loads(repo.storage.get(info.key))
            out.append(
                LockInfo(
                    info.key,
                    str(data["kind"]),
                    str(data.get("purpose", "")),
                    str(data.get("host", "?")),
                    int(data.get("pid", 0)),
                    float(data.get("created", 0)),
                    float(data["expires"]),
                )
            )
        except ObjectNotFound:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            # unreadable (bad JSON, a pid of 1e400, nesting deeper than the parser goes):
            # treat as a live exclusive lock until it expires by age
            out.append(
                LockInfo(
                    info.key, EXCLUSIVE, "unreadable lock", "?", 0, info.mtime, info.mtime + TTL
                )
            )
    return out


class Lock:
    """A lock held by this process; refreshed in the background until released."""

    def __init__(self, repo: Repository, kind: str, purpose: str) -> None:
        self.repo = repo
        self.kind = kind
        self.purpose = purpose
        self.key = f"locks/{secrets.token_hex(16)}"
        self.created = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self._written_at = 0.0  # monotonic time of the last successful write of our lock
        self._counted = False  # counted in the repository's shared locks (its local cache)

    def _body(self) -> bytes:
        data: dict[str, Any] = {
            "kind": self.kind,
            "purpose": self.purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": self.created,
            "expires": time.time() + TTL,
        }
        return json.dumps(data).encode()

    def _write(self) -> None:
        started = time.monotonic()
        self.repo.storage.put(self.key, self._body())
        self._written_at = started

    def check_held(self) -> None:
        """Raise LockLost unless our lock is certainly still live for every other process.

        Called before a backup commits: a lock that went unrefreshed past its expiry (a
        stalled process, a lost network) may have let a prune run, which may have deleted
        pieces this backup deduplicated against.
        """
        if not self.held:
            raise LockLost("the repository lock was released before the work finished")
        if time.monotonic() - self._written_at > TTL - REFRESH / 2:
            raise LockLost(
                "the repository lock could not be refreshed in time; nothing was committed "
                "(run the job again)"
            )
        if self.repo.storage.head(self.key) is None:
            raise LockLost(
                "the repository lock was removed by another process ('lamina unlock --all'?); "
                "nothing was committed (run the job again)"
            )

    def try_acquire(self) -> list[LockInfo]:
        """Write our lock, then look for conflicts. Returns the conflicting locks (none: held)."""
        self._write()
        conflicts = [
            other
            for other in list_locks(self.repo)
            if other.key != self.key
            and not other.stale
            and (self.kind == EXCLUSIVE or other.kind == EXCLUSIVE)
        ]
        if conflicts:
            self.repo.storage.delete(self.key)
            return conflicts
        self.held = True
        with _held_lock:
            _held.add(self)
        # In the taker's context: its refreshes count for the job that holds the lock.
        self._thread = threading.Thread(
            target=in_context(self._refresh), name="lamina-lock", daemon=True
        )
        self._thread.start()
        return []

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self._write()
            except LaminaError as e:  # keep trying: the lock only goes stale after TTL
                log.warning("cannot refresh repository lock %s: %s", self.key, e)

    def release(self) -> None:
        with _held_lock:
            _held.discard(self)
        if self._counted:
            self._counted = False
            self.repo.lock_released()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.held:
            try:
                self.repo.storage.delete(self.key)
            except LaminaError as e:
                log.warning(
                    "cannot remove repository lock %s: %s (it expires by itself)", self.key, e
                )
        self.held = False

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    repo: Repository,
    kind: str,
    purpose: str,
    *,
    wait: float = 0.0,
    cancelled: Any = None,
    optional: bool = False,
) -> Lock | None:
    """Take a lock, waiting up to ``wait`` seconds for conflicting ones to go.

    With ``optional`` (read-only work), a repository that refuses writes (read-only
    credentials) is read without a lock instead of failing.
    """
    deadline = time.monotonic() + wait
    delay = 0.2
    while True:
        lock = Lock(repo, kind, purpose)
        try:
            conflicts = lock.try_acquire()
        except StorageError as e:
            if optional:
                log.warning("reading without a lock: %s", e)
                repo.revalidate()
                return None
            raise
        if not conflicts:
            try:
                # Nothing read before this moment may be acted on (docs/format.md, "Coherence").
                repo.revalidate(exclusive=kind == EXCLUSIVE)
            except BaseException:
                lock.release()
                raise
            if kind == SHARED:  # from now on no deleter runs: see Repository.manifest_tag
                lock._counted = True
                repo.lock_granted()
            return lock
        if time.monotonic() >= deadline or (cancelled is not None and cancelled()):
            raise RepositoryLocked(
                f"the repository is in use: {conflicts[0].describe()}; wait for it, or remove a "
                f"lock left by a crashed process with 'lamina unlock'"
            )
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)


def remove_locks(repo: Repository, *, all_locks: bool = False) -> list[LockInfo]:
    """Remove stale locks (or every lock). Returns what was removed."""
    removed = []
    for lock in list_locks(repo):
        if all_locks or lock.stale:
            repo.storage.delete(lock.key)
            removed.append(lock)
    return removed
