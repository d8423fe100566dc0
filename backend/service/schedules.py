"""Schedules on one machine: stored in the job-history catalog, run by `lamina controller --local`.

A schedule is a backup of one local-cluster volume (snapshot, CBT, backup, then forget by
its retention) or a prune of a repository, every N seconds or by a cron expression (UTC).
The rules (docs/schedules.md): a slot is run once, claimed by moving ``next_run`` on in
the catalog; slots missed while no controller ran are folded into one run, and the next
slot is the first one after now.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import default_catalog_url, open_catalog
from ..catalog.records import ScheduleRow
from ..engine.lifecycle import Policy
from ..errors import LaminaError, UsageError
from ..limits import checked_name, parse_keep_within, shown
from .clusters import LOCAL, add_local_volume

# The database layer (SQLAlchemy) and croniter load when a schedule is read or written: a
# remote client imports this module for ScheduleInfo alone.
if TYPE_CHECKING:
    from ..catalog import Catalog

BACKUP = "backup"
PRUNE = "prune"
#: The shortest interval: seconds are allowed, for demos and tests.
MIN_EVERY = 1.0
_EVERY_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_RETENTION_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def parse_every(text: str) -> float:
    """An interval: '30s', '5m', '1h', '1h30m', '2d', '1w' (or plain seconds, '90')."""
    value = text.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        match = _EVERY_RE.fullmatch(value)
        if not value or len(value) > 32 or not match:
            raise UsageError(
                f"not an interval: '{shown(text)}' (examples: 30s, 5m, 1h, 1h30m, 2d, 1w)"
            )
        w, d, h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = float(((w * 7 + d) * 24 + h) * 3600 + m * 60 + s)
    if seconds < MIN_EVERY:
        raise UsageError(f"the interval '{shown(text)}' is shorter than one second")
    if seconds > 100 * 365 * 86400:
        raise UsageError(f"the interval '{shown(text)}' is longer than 100 years")
    return seconds


def check_cron(expression: str) -> str:
    """A five-field cron expression (minute hour day month weekday, in UTC)."""
    from croniter import croniter

    text = " ".join(expression.split())
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise UsageError(
            f"not a cron expression: '{shown(expression)}' (five fields, minute hour day "
            "month weekday, in UTC; for example '0 */4 * * *')"
        )
    return text


def retention_of(policy: Policy) -> dict[str, Any]:
    kept: dict[str, Any] = {k: getattr(policy, k) for k in _RETENTION_KEYS if getattr(policy, k)}
    if policy.within is not None:
        kept["within_seconds"] = policy.within.total_seconds()
    return kept


def policy_of(retention: dict[str, Any]) -> Policy:
    from datetime import timedelta

    within = retention.get("within_seconds")
    return Policy(
        **{k: int(retention.get(k, 0)) for k in _RETENTION_KEYS},
        within=None if within is None else timedelta(seconds=float(within)),
    )


def next_slot(row: ScheduleRow, after: float) -> float:
    """The first slot strictly after ``after``: on the grid ``created_at + k * every``, or
    the cron expression's next time."""
    if row.cron:
        from croniter import croniter

        start = datetime.fromtimestamp(after, UTC)
        return float(croniter(row.cron, start).get_next(float))
    every = float(row.every_seconds or MIN_EVERY)
    steps = math.floor((after - row.created_at) / every) + 1
    return row.created_at + max(1, steps) * every


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the front ends show it."""

    name: str
    kind: str
    repository: str
    volume: str | None
    source: str | None
    local_root: str | None
    password_file: str | None
    every_seconds: float | None
    cron: str | None
    retention: dict[str, Any] = field(default_factory=dict)
    paused: bool = False
    run_now_pending: bool = False
    next_run: float = 0.0
    last_run: float | None = None
    last_state: str | None = None
    last_error: str | None = None
    last_jobs: list[str] = field(default_factory=list)
    created_at: float = 0.0
    copy_to: str | None = None  # after each backup, the volume's points are copied there
    copy_password_file: str | None = None

    @property
    def state(self) -> str:
        return "paused" if self.paused else "active"

    @property
    def when(self) -> str:
        """'every 30s' or 'cron 0 */4 * * *'."""
        if self.cron:
            return f"cron {self.cron}"
        return f"every {format_every(self.every_seconds or 0)}"

    @classmethod
    def of(cls, row: ScheduleRow) -> ScheduleInfo:
        try:
            retention = json.loads(row.retention or "{}")
        except ValueError:
            retention = {}
        return cls(
            name=row.name,
            kind=row.kind,
            repository=row.repository,
            volume=row.volume,
            source=row.source,
            local_root=row.local_root,
            password_file=row.password_file,
            every_seconds=row.every_seconds,
            cron=row.cron,
            retention=retention if isinstance(retention, dict) else {},
            paused=bool(row.paused),
            run_now_pending=bool(row.run_once),
            next_run=float(row.next_run),
            last_run=row.last_run,
            last_state=row.last_state,
            last_error=row.last_error,
            last_jobs=(row.last_jobs or "").split(),
            created_at=float(row.created_at),
            copy_to=row.copy_to,
            copy_password_file=row.copy_password_file,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "repository": self.repository,
            "volume": self.volume,
            "source": self.source,
            "local_root": self.local_root,
            "password_file": self.password_file,
            "every_seconds": self.every_seconds,
            "cron": self.cron,
            "retention": self.retention,
            "state": self.state,
            "run_now_pending": self.run_now_pending,
            "next_run": _iso(self.next_run),
            "last_run": _iso(self.last_run) if self.last_run is not None else None,
            "last_state": self.last_state,
            "last_error": self.last_error,
            "last_jobs": self.last_jobs,
            "created": _iso(self.created_at),
            "copy_to": self.copy_to,
            "copy_password_file": self.copy_password_file,
        }


#: Cron slots looked at for the longest time between two of them.
_CRON_GAPS = 10


def allowed_age(info: ScheduleInfo) -> float:
    """How old the newest good backup of a schedule's volume may get before it is late:
    two intervals, or twice the longest time between its next cron slots."""
    if info.cron:
        from croniter import croniter

        times = croniter(info.cron, datetime.fromtimestamp(info.next_run, UTC))
        slots = [info.next_run] + [float(times.get_next(float)) for _ in range(_CRON_GAPS)]
        gap = max(b - a for a, b in itertools.pairwise(slots))
    else:
        gap = float(info.every_seconds or MIN_EVERY)
    return 2 * gap


def format_every(seconds: float) -> str:
    left = int(seconds)
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local_volume(volume: str) -> tuple[str, str]:
    """NAMESPACE/NAME (or NAME, in namespace 'default') of the local cluster."""
    parts = volume.split("/")
    if parts[0] == LOCAL and len(parts) == 3:
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["default", parts[0]]
    if len(parts) != 2:
        raise UsageError(
            f"not a local volume: '{shown(volume)}' (NAME or NAMESPACE/NAME of the local cluster)"
        )
    return checked_name(parts[0], "namespace"), checked_name(parts[1], "volume name")


def _check_source(source: str) -> str:
    path = os.path.abspath(source)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"no source '{shown(source)}': {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise UsageError(f"the source '{shown(source)}' is not an image file or block device")
    return path


def _register_volume(root: str, namespace: str, name: str, source: str) -> None:
    """Make the volume a local-cluster volume of ``source``, or check that it is one."""
    link = Path(root) / "volumes" / namespace / name
    if link.is_symlink() or link.exists():
        current = os.path.realpath(link)
        if current != os.path.realpath(source):
            raise UsageError(
                f"volume {namespace}/{name} of the local cluster at '{shown(root)}' is "
                f"'{shown(current)}', not '{shown(source)}'"
            )
        return
    add_local_volume(root, namespace, name, source)


class Schedules:
    """The schedules of one catalog: add, list, remove, pause, resume, run now."""

    def __init__(self, catalog_url: str | None = None) -> None:
        self.catalog_url = catalog_url or default_catalog_url()

    def _open(self) -> Catalog:
        return open_catalog(self.catalog_url)

    def add(
        self,
        name: str,
        *,
        repository: str,
        every: str | None = None,
        cron: str | None = None,
        volume: str | None = None,
        source: str | None = None,
        local_root: str | None = None,
        policy: Policy | None = None,
        prune: bool = False,
        password_file: str | None = None,
        copy_to: str | None = None,
        copy_password_file: str | None = None,
        now: float | None = None,
    ) -> ScheduleInfo:
        """Check everything, then store the schedule. A backup schedule registers its
        source as the local-cluster volume when the volume is not there yet; with
        ``copy_to`` each run then copies the volume's points to that repository."""
        checked_name(name, "schedule name")
        if (every is None) == (cron is None):
            raise UsageError("give one of --every INTERVAL or --cron EXPRESSION")
        every_seconds = parse_every(every) if every is not None else None
        cron_text = check_cron(cron) if cron is not None else None
        policy = policy or Policy()
        namespace = volume_name = None
        if prune:
            if volume or source:
                raise UsageError("a prune schedule takes no --volume or --source")
            if not policy.empty:
                raise UsageError("a prune schedule takes no --keep-* options")
        else:
            if not volume or not source:
                raise UsageError("a backup schedule needs --volume NAME and --source IMAGE|DEVICE")
            if not local_root:
                raise UsageError(
                    "no local cluster folder: give --local-root or set LAMINA_LOCAL_ROOT"
                )
            namespace, volume_name = _local_volume(volume)
            source = _check_source(source)
            local_root = os.path.abspath(local_root)
        if copy_password_file is not None and copy_to is None:
            raise UsageError("--copy-password-file goes with --copy-to")
        if copy_to is not None and prune:
            raise UsageError("a prune schedule takes no --copy-to; copies follow backups")
        if password_file is not None:
            password_file = os.path.abspath(password_file)
        if copy_password_file is not None:
            copy_password_file = os.path.abspath(copy_password_file)
        if copy_to is not None and "://" not in copy_to:
            copy_to = os.path.abspath(copy_to)
        repository_id = self._check_repository(repository, password_file)
        if (
            copy_to is not None
            and self._check_repository(copy_to, copy_password_file) == repository_id
        ):
            raise UsageError(
                f"--copy-to '{shown(copy_to)}' is the schedule's own repository; give another one"
            )
        from ..catalog.schedules import add_schedule, get_schedule

        catalog = self._open()
        try:
            try:
                get_schedule(catalog, name)
            except LaminaError:
                pass
            else:
                raise UsageError(f"a schedule named '{shown(name)}' exists already")
            if not prune:
                assert local_root and namespace and volume_name and source
                _register_volume(local_root, namespace, volume_name, source)
            created = now if now is not None else time.time()
            row = ScheduleRow(
                name=name,
                kind=PRUNE if prune else BACKUP,
                repository=repository,
                created_at=created,
                next_run=created,
                password_file=password_file,
                local_root=None if prune else local_root,
                volume=None if prune else f"{namespace}/{volume_name}",
                source=source,
                every_seconds=every_seconds,
                cron=cron_text,
                retention=json.dumps(retention_of(policy)),
                copy_to=copy_to,
                copy_password_file=copy_password_file,
            )
            # The first slot: the next on the grid (a cron time, or one interval from now).
            row.next_run = next_slot(row, created)
            add_schedule(catalog, row)
            return ScheduleInfo.of(row)
        finally:
            catalog.close()

    @staticmethod
    def _check_repository(repository: str, password_file: str | None) -> str:
        """The repository opens with the password file: a schedule that can never run is
        refused. Returns the repository's id."""
        from .service import Service, read_password_file

        service = Service(repository, password=read_password_file(password_file), catalog="none")
        try:
            return service.info().id
        finally:
            service.close()

    def list(self) -> list[ScheduleInfo]:
        from ..catalog.schedules import list_schedules, reap_runs

        catalog = self._open()
        try:
            reap_runs(catalog)  # a run whose controller was killed shows as interrupted
            return [ScheduleInfo.of(r) for r in list_schedules(catalog)]
        finally:
            catalog.close()

    def get(self, name: str) -> ScheduleInfo:
        catalog = self._open()
        try:
            return ScheduleInfo.of(self._row(catalog, name))
        finally:
            catalog.close()

    @staticmethod
    def _row(catalog: Catalog, name: str) -> ScheduleRow:
        from ..catalog.schedules import get_schedule

        try:
            return get_schedule(catalog, name)
        except LaminaError:
            raise UsageError(f"no schedule '{shown(name)}'") from None

    def remove(self, name: str) -> None:
        from ..catalog.schedules import remove_schedule

        catalog = self._open()
        try:
            self._row(catalog, name)
            remove_schedule(catalog, name)
        finally:
            catalog.close()

    def pause(self, name: str) -> ScheduleInfo:
        return self._change(name, paused=True)

    def resume(self, name: str, now: float | None = None) -> ScheduleInfo:
        """Active again; the slots it was paused over are skipped, not caught up."""
        from ..catalog.schedules import update_schedule

        catalog = self._open()
        try:
            row = self._row(catalog, name)
            at = now if now is not None else time.time()
            values: dict[str, Any] = {"paused": False}
            if row.paused and row.next_run <= at and not row.run_once:
                values["next_run"] = next_slot(row, at)
            update_schedule(catalog, name, **values)
            return ScheduleInfo.of(self._row(catalog, name))
        finally:
            catalog.close()

    def run_now(self, name: str, now: float | None = None) -> ScheduleInfo:
        """Due now: the next controller pass runs it once, also when it is paused."""
        at = now if now is not None else time.time()
        return self._change(name, next_run=at, run_once=True)

    def _change(self, name: str, **values: Any) -> ScheduleInfo:
        from ..catalog.schedules import update_schedule

        catalog = self._open()
        try:
            self._row(catalog, name)
            update_schedule(catalog, name, **values)
            return ScheduleInfo.of(self._row(catalog, name))
        finally:
            catalog.close()


def policy_from_options(
    *,
    last: int = 0,
    hourly: int = 0,
    daily: int = 0,
    weekly: int = 0,
    monthly: int = 0,
    yearly: int = 0,
    within: str | None = None,
) -> Policy:
    """A retention policy from `lamina forget`'s --keep-* options."""
    for option, value in (
        ("last", last),
        ("hourly", hourly),
        ("daily", daily),
        ("weekly", weekly),
        ("monthly", monthly),
        ("yearly", yearly),
    ):
        if value < 0:
            raise UsageError(f"--keep-{option} must not be negative")
    return Policy(
        last=last,
        hourly=hourly,
        daily=daily,
        weekly=weekly,
        monthly=monthly,
        yearly=yearly,
        within=parse_keep_within(within) if within else None,
    )
