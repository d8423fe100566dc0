"""Repository locks over in-memory storage: conflicts, staleness, release and LockLost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lamina.backend.engine import locks
from lamina.backend.engine.locks import (
    EXCLUSIVE,
    SHARED,
    SKEW,
    TTL,
    Lock,
    LockLost,
    RepositoryLocked,
    acquire,
    list_locks,
    remove_locks,
)
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage.memory import MemoryStorage


@pytest.fixture
def repo() -> Iterator[Repository]:
    repository = Repository.init(MemoryStorage(), grid_size=64 * 1024)
    yield repository
    locks.release_all()


def _lock_keys(repo: Repository) -> set[str]:
    return {info.key for info in repo.storage.list("locks/")}


def _put_lock(
    repo: Repository, name: str, *, kind: str = EXCLUSIVE, host: str = "elsewhere", **fields: object
) -> str:
    """A lock object as another process would leave it."""
    data: dict[str, object] = {
        "kind": kind,
        "purpose": "prune",
        "host": host,
        "pid": 4242,
        "created": time.time() - 10,
        "expires": time.time() + TTL,
    }
    data.update(fields)
    key = f"locks/{name}"
    repo.storage.put(key, json.dumps(data).encode())
    return key


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_shared_locks_are_held_together(repo: Repository) -> None:
    first = acquire(repo, SHARED, "backup")
    second = acquire(repo, SHARED, "verify")
    assert first is not None and second is not None
    assert first.held and second.held
    assert _lock_keys(repo) == {first.key, second.key}
    described = {(info.kind, info.purpose) for info in list_locks(repo)}
    assert described == {(SHARED, "backup"), (SHARED, "verify")}
    first.release()
    second.release()
    assert _lock_keys(repo) == set()


@pytest.mark.parametrize(
    ("held", "wanted"), [(SHARED, EXCLUSIVE), (EXCLUSIVE, SHARED), (EXCLUSIVE, EXCLUSIVE)]
)
def test_conflicting_locks_are_refused_without_a_trace(
    repo: Repository, held: str, wanted: str
) -> None:
    holder = acquire(repo, held, "backup")
    assert holder is not None
    contender = Lock(repo, wanted, "prune")
    conflicts = contender.try_acquire()
    assert [c.key for c in conflicts] == [holder.key]
    assert not contender.held
    assert _lock_keys(repo) == {holder.key}  # the refused lock removed its own object
    with pytest.raises(RepositoryLocked) as refused:
        acquire(repo, wanted, "prune")
    message = str(refused.value)
    assert f"{held} lock for backup by pid" in message and "(live)" in message
    assert "lamina unlock" in message
    assert _lock_keys(repo) == {holder.key}
    holder.release()
    granted = acquire(repo, wanted, "prune")
    assert granted is not None and granted.held


def test_expired_lock_is_stale(repo: Repository) -> None:
    old = _put_lock(repo, "old", expires=time.time() - SKEW - 5)
    recent = _put_lock(repo, "recent", expires=time.time() - SKEW + 30)  # within the clock slack
    by_key = {info.key: info for info in list_locks(repo)}
    assert by_key[old].stale and "(stale)" in by_key[old].describe()
    assert not by_key[recent].stale
    repo.storage.delete(recent)
    lock = acquire(repo, EXCLUSIVE, "prune")
    assert lock is not None and lock.held
    lock.release()
    assert [info.key for info in remove_locks(repo)] == [old]
    assert _lock_keys(repo) == set()


def test_lock_of_a_dead_local_process_is_stale_at_once(repo: Repository) -> None:
    dead = _dead_pid()
    local = _put_lock(repo, "local", host=socket.gethostname(), pid=dead)
    remote = _put_lock(repo, "remote", host="another-host", pid=dead)
    by_key = {info.key: info for info in list_locks(repo)}
    assert by_key[local].stale
    assert not by_key[remote].stale  # a pid on another host says nothing here
    with pytest.raises(RepositoryLocked, match="on another-host"):
        acquire(repo, SHARED, "backup")
    repo.storage.delete(remote)
    lock = acquire(repo, SHARED, "backup")
    assert lock is not None and lock.held


def test_lock_of_a_live_local_process_is_live(repo: Repository) -> None:
    key = _put_lock(repo, "mine", host=socket.gethostname(), pid=os.getppid())
    assert not {info.key: info for info in list_locks(repo)}[key].stale


@pytest.mark.parametrize(
    "blob",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"kind": "shared"}',
        b'{"kind": "shared", "expires": "soon"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"kind": "shared", "expires": 1, "pid": 1' + b"0" * 5000 + b"}",
        b'{"kind": "shared", "expires": 1, "pid": 1e400}',
    ],
    ids=["text", "bad-utf8", "list", "no-expiry", "bad-expiry", "deep", "huge-int", "inf-pid"],
)
def test_unreadable_lock_counts_as_live_exclusive(repo: Repository, blob: bytes) -> None:
    repo.storage.put("locks/garbage", blob)
    [info] = list_locks(repo)
    assert (info.kind, info.purpose, info.stale) == (EXCLUSIVE, "unreadable lock", False)
    with pytest.raises(RepositoryLocked, match="unreadable lock"):
        acquire(repo, SHARED, "backup")
    assert remove_locks(repo) == []  # live until it ages out
    assert [info.key for info in remove_locks(repo, all_locks=True)] == ["locks/garbage"]


def test_pid_no_process_can_have_is_stale(repo: Repository) -> None:
    key = _put_lock(repo, "odd", host=socket.gethostname(), pid=2**70)
    assert {info.key: info for info in list_locks(repo)}[key].stale


def test_release_removes_the_lock_once(repo: Repository) -> None:
    lock = acquire(repo, SHARED, "backup")
    assert lock is not None
    lock.release()
    assert not lock.held and _lock_keys(repo) == set()
    other = _put_lock(repo, "other", kind=SHARED)
    lock.release()  # a second release touches nothing
    assert _lock_keys(repo) == {other}


def test_context_manager_and_release_all(repo: Repository) -> None:
    with acquire(repo, SHARED, "backup") as lock:  # type: ignore[union-attr]
        assert _lock_keys(repo) == {lock.key}
    assert _lock_keys(repo) == set()
    acquire(repo, SHARED, "a")
    acquire(repo, SHARED, "b")
    assert locks.release_all() == 2
    assert _lock_keys(repo) == set()
    assert locks.release_all() == 0


def test_check_held_while_held_then_lock_lost_after_release(repo: Repository) -> None:
    lock = acquire(repo, SHARED, "backup")
    assert lock is not None
    lock.check_held()
    lock.release()
    with pytest.raises(LockLost, match="released before the work finished"):
        lock.check_held()


def test_lock_removed_by_another_process_is_lost(repo: Repository) -> None:
    lock = acquire(repo, SHARED, "backup")
    assert lock is not None
    assert [info.key for info in remove_locks(repo, all_locks=True)] == [lock.key]
    with pytest.raises(LockLost, match="removed by another process"):
        lock.check_held()


def test_lock_not_refreshed_in_time_is_lost(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = acquire(repo, SHARED, "backup")
    assert lock is not None
    written = time.monotonic()
    # A process stalled for most of the TTL: others may already count the lock stale.
    monkeypatch.setattr(time, "monotonic", lambda: written + TTL)
    with pytest.raises(LockLost, match="could not be refreshed in time"):
        lock.check_held()


def test_exclusive_lock_bumps_the_generation_and_shared_does_not(repo: Repository) -> None:
    before = repo.read_generation()
    shared = acquire(repo, SHARED, "backup")
    assert shared is not None
    assert repo.read_generation() == before
    shared.release()
    exclusive = acquire(repo, EXCLUSIVE, "prune")
    assert exclusive is not None
    bumped = repo.read_generation()
    assert bumped and bumped != before
