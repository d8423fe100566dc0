"""The schedules table: stored schedules and the row-level claim of a slot.

A controller claims a due slot with ``UPDATE schedules SET next_run = NEW ... WHERE name =
N AND next_run = OLD`` and owns it only when the update changed one row: SQLite and
PostgreSQL alike make the second of two racing updates see the first one's value, so a
slot runs once however many controllers share the catalog (docs/schedules.md).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .process import current_process, is_alive_here
from .records import ScheduleRow
from .schema import schedules
from .store import Catalog, CatalogError


class ScheduleNotFound(CatalogError):
    """No schedule of that name."""


class ScheduleExists(CatalogError):
    """A schedule of that name is there already."""


def _missing(name: str) -> ScheduleNotFound:
    return ScheduleNotFound(f"no schedule {name!r}")


def add_schedule(catalog: Catalog, row: ScheduleRow) -> None:
    def write(conn: Connection) -> None:
        taken = conn.execute(sa.select(schedules.c.name).where(schedules.c.name == row.name))
        if taken.first() is not None:
            raise ScheduleExists(f"a schedule named {row.name!r} exists already")
        conn.execute(schedules.insert().values(**row.values()))

    try:
        catalog._write(write)
    except CatalogError as e:
        if "UNIQUE" in str(e).upper() or "duplicate key" in str(e):  # lost an insert race
            raise ScheduleExists(f"a schedule named {row.name!r} exists already") from None
        raise


def list_schedules(catalog: Catalog) -> list[ScheduleRow]:
    with catalog._reading() as conn:
        rows = conn.execute(sa.select(schedules).order_by(schedules.c.name)).all()
    return [ScheduleRow.of_row(r) for r in rows]


def get_schedule(catalog: Catalog, name: str) -> ScheduleRow:
    with catalog._reading() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == name)).first()
    if row is None:
        raise _missing(name)
    return ScheduleRow.of_row(row)


def update_schedule(catalog: Catalog, name: str, **values: Any) -> None:
    def write(conn: Connection) -> int:
        result = conn.execute(schedules.update().where(schedules.c.name == name).values(**values))
        return int(result.rowcount)

    if catalog._write(write) != 1:
        raise _missing(name)


def remove_schedule(catalog: Catalog, name: str) -> None:
    def write(conn: Connection) -> int:
        return int(conn.execute(schedules.delete().where(schedules.c.name == name)).rowcount)

    if catalog._write(write) != 1:
        raise _missing(name)


def due_schedules(catalog: Catalog, now: float) -> list[ScheduleRow]:
    """Schedules whose slot has come: not paused, or paused with a run-now pending."""
    statement = (
        sa.select(schedules)
        .where(
            schedules.c.next_run <= now,
            sa.or_(schedules.c.paused.is_(False), schedules.c.run_once.is_(True)),
        )
        .order_by(schedules.c.next_run, schedules.c.name)
    )
    with catalog._reading() as conn:
        return [ScheduleRow.of_row(r) for r in conn.execute(statement)]


def claim_slot(
    catalog: Catalog,
    name: str,
    old_next_run: float,
    new_next_run: float,
    claimed_by: str,
    now: float,
) -> bool:
    """Move the schedule's next slot on from ``old_next_run``; True when this call did it."""

    def write(conn: Connection) -> int:
        result = conn.execute(
            schedules.update()
            .where(schedules.c.name == name, schedules.c.next_run == old_next_run)
            .values(
                next_run=new_next_run,
                run_once=False,
                last_run=now,
                last_state="running",
                last_error=None,
                last_jobs=None,
                claimed_by=claimed_by,
            )
        )
        return int(result.rowcount)

    return bool(catalog._write(write) == 1)


def next_run_of(catalog: Catalog) -> float | None:
    """The earliest slot of any active schedule (None: there is none)."""
    with catalog._reading() as conn:
        value = conn.execute(
            sa.select(sa.func.min(schedules.c.next_run)).where(
                sa.or_(schedules.c.paused.is_(False), schedules.c.run_once.is_(True))
            )
        ).scalar()
    return None if value is None else float(value)


def claimer_identity() -> str:
    """``host:pid:boot_id:start`` of this process: what ``claimed_by`` holds."""
    me = current_process()
    return f"{me.host}:{me.pid}:{me.boot_id}:{me.start}"


def claimer_alive(claimed_by: str | None) -> bool | None:
    """Whether the controller that claimed a run still runs: None when it is of another host."""
    parts = (claimed_by or "").split(":")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    host, pid, boot_id, start = parts
    if host != current_process().host:
        return None
    return is_alive_here(int(pid), boot_id, start)


def reap_runs(catalog: Catalog) -> list[str]:
    """Runs still ``running`` whose controller on this host is gone become ``interrupted``."""
    gone = []
    for row in list_schedules(catalog):
        if row.last_state != "running" or claimer_alive(row.claimed_by) is not False:
            continue
        host, pid = (row.claimed_by or "").split(":")[:2]
        line = f"interrupted: its controller ({host}, pid {pid}) ended without recording an end"

        def write(conn: Connection, name: str = row.name, line: str = line) -> None:
            conn.execute(
                schedules.update()
                .where(schedules.c.name == name, schedules.c.last_state == "running")
                .values(last_state="interrupted", last_error=line)
            )

        catalog._write(write)
        gone.append(row.name)
    return gone
