"""A BackupSchedule's slots and the one name each slot's Backup gets.

The name is a function of (schedule, PVC, slot), so creating a slot's Backup twice is a 409
from the API server: a slot can never run twice, whichever controller (or leader) tries.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from croniter import croniter

from ...kube.objects import dns_label
from ..schedules import check_cron, parse_every

#: Backup names stay DNS labels: they end up in label values and Job names.
NAME_LIMIT = 63


def parse_when(cron: str | None, every: str | None) -> tuple[str | None, float | None]:
    """The checked cron expression or interval in seconds; UsageError for bad input."""
    from ...errors import UsageError

    if bool(cron) == bool(every):
        raise UsageError("a BackupSchedule takes exactly one of spec.cron and spec.every")
    if cron:
        return check_cron(cron), None
    assert every is not None
    return None, parse_every(every)


def due_slot(cron: str | None, every: float | None, created: float, now: float) -> float | None:
    """The newest slot at or before `now` (missed older slots fold into it), None before the
    first. An interval's slots are created + k x every (k >= 1); cron's are its times after
    `created`."""
    if every is not None:
        if now < created + every:
            return None
        return created + ((now - created) // every) * every
    assert cron is not None
    # croniter's get_prev is strictly before its start: start just after now, so that a slot
    # at exactly `now` counts, and step back once more if that overshot
    previous = float(croniter(cron, datetime.fromtimestamp(now + 1, UTC)).get_prev(float))
    if previous > now:
        previous = float(croniter(cron, datetime.fromtimestamp(previous, UTC)).get_prev(float))
    return previous if previous > created else None


def next_slot_after(cron: str | None, every: float | None, created: float, now: float) -> float:
    if every is not None:
        return created + ((now - created) // every + 1) * every
    assert cron is not None
    return float(croniter(cron, datetime.fromtimestamp(now, UTC)).get_next(float))


def slot_stamp(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).strftime("%Y%m%d-%H%M%S")


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def backup_name(schedule: str, namespace: str, pvc: str, own_namespace: str, slot: float) -> str:
    """`SCHEDULE-PVC-YYYYMMDD-HHMMSS` (the PVC's namespace too when it is another one),
    shortened with a hash of the whole when it would be longer than a DNS label."""
    volume = pvc if namespace == own_namespace else f"{namespace}-{pvc}"
    stamp = slot_stamp(slot)
    name = dns_label(f"{schedule}-{volume}-{stamp}", 1000)
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(f"{schedule}\0{namespace}\0{pvc}\0{slot}".encode()).hexdigest()[:8]
    head = dns_label(f"{schedule}-{volume}", NAME_LIMIT - len(stamp) - len(digest) - 2)
    return f"{head}-{digest}-{stamp}"
