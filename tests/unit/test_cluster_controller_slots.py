"""The cluster controller's slots and names: the catch-up rule folds missed slots into the
newest, a slot's Backup always gets the same name, and the work queue hands a key to one
worker at a time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.service.cluster_controller.controller import WorkQueue
from lamina.backend.service.cluster_controller.slots import (
    backup_name,
    due_slot,
    next_slot_after,
    parse_when,
)


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_interval_slots_fold_missed_ones_into_the_newest() -> None:
    created = _at("2026-01-01T00:00:00")
    assert due_slot(None, 60.0, created, created + 59) is None
    assert due_slot(None, 60.0, created, created + 60) == created + 60
    # three slots missed: one run, for the newest
    assert due_slot(None, 60.0, created, created + 200) == created + 180
    assert next_slot_after(None, 60.0, created, created + 200) == created + 240


def test_cron_slots_include_an_exact_time_and_none_before_creation() -> None:
    created = _at("2026-01-01T00:05:00")
    assert due_slot("0 * * * *", None, created, _at("2026-01-01T00:59:59")) is None
    assert due_slot("0 * * * *", None, created, _at("2026-01-01T01:00:00")) == _at(
        "2026-01-01T01:00:00"
    )
    assert due_slot("0 * * * *", None, created, _at("2026-01-01T03:30:00")) == _at(
        "2026-01-01T03:00:00"
    )
    assert next_slot_after("0 * * * *", None, created, _at("2026-01-01T03:30:00")) == _at(
        "2026-01-01T04:00:00"
    )


def test_schedule_syntax_is_checked() -> None:
    assert parse_when(None, "1h30m") == (None, 5400.0)
    assert parse_when("0  */4 * * *", None) == ("0 */4 * * *", None)
    for cron, every in (("61 * * * *", None), (None, "soon"), ("* * * * *", "1h"), (None, None)):
        with pytest.raises(UsageError):
            parse_when(cron, every)


def test_a_slot_has_one_name_a_dns_label() -> None:
    slot = _at("2026-03-04T05:06:07")
    assert backup_name("db-hourly", "apps", "db", "apps", slot) == "db-hourly-db-20260304-050607"
    assert backup_name("s", "other", "db", "apps", slot) == "s-other-db-20260304-050607"
    long = backup_name("x" * 80, "apps", "y" * 80, "apps", slot)
    assert len(long) <= 63 and long.endswith("-20260304-050607")
    assert long == backup_name("x" * 80, "apps", "y" * 80, "apps", slot)
    assert long != backup_name("x" * 80, "apps", "y" * 79 + "z", "apps", slot)


def test_work_queue_hands_a_key_to_one_worker_and_requeues_what_came_meanwhile() -> None:
    queue = WorkQueue()
    stop = threading.Event()
    key = ("backups", "ns", "a")
    queue.add(key)
    queue.add(key)
    assert queue.get(stop) == key
    assert len(queue) == 0
    queue.add(key)  # an event while a worker holds it: kept for after
    assert len(queue) == 0
    queue.done(key)
    assert len(queue) == 1
    assert queue.get(stop) == key
    queue.done(key)
    stop.set()
    assert queue.get(stop) is None
