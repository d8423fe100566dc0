"""The job-history catalog: every job of the service, its state changes and its figures.

SQLite (one file, the embedded default) or PostgreSQL (many hosts share one history),
through SQLAlchemy Core. The schema is Alembic's: ``Catalog.open`` migrates an older
catalog to the head revision and refuses one from a newer lamina.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..errors import UsageError
from .process import current_process, is_alive_here

# The plain values live in records.py (no SQLAlchemy there); named here as they always were.
from .records import CATALOG_ENV as CATALOG_ENV
from .records import FAILED_STATES as FAILED_STATES
from .records import HEARTBEAT_EVERY as HEARTBEAT_EVERY
from .records import INTERRUPTED as INTERRUPTED
from .records import LIVE_STATES as LIVE_STATES
from .records import OFF as OFF
from .records import REQUEST_OPS as REQUEST_OPS
from .records import STALE_AFTER as STALE_AFTER
from .records import CatalogError as CatalogError
from .records import CatalogTooNew as CatalogTooNew
from .records import CatalogTotals as CatalogTotals
from .records import HistoryQuery as HistoryQuery
from .records import JobEvent as JobEvent
from .records import JobNotFound as JobNotFound
from .records import JobRecord as JobRecord
from .records import default_catalog_url as default_catalog_url
from .schema import job_events, jobs
from .spool import Pending, Spool, spool_folder

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def shown_url(url: str) -> str:
    """A catalog URL fit for a message: never its password."""
    if "://" not in url:
        return url
    try:
        return str(make_url(url).render_as_string(hide_password=True))
    except sa.exc.ArgumentError:
        return url


def _parse(url: str) -> URL:
    if "://" not in url:
        url = "sqlite:///" + os.path.abspath(url)  # a plain path is an SQLite file
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(
            f"not a catalog URL: {url!r} (sqlite:///PATH or postgresql://USER@HOST/DB)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite":
        return parsed
    raise UsageError(
        f"unsupported catalog URL scheme {parsed.drivername!r}: use sqlite:///PATH or postgresql://..."
    )


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config  # alembic is imported only to migrate: it is slow to load

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    """Every revision, oldest first, from the migration files' names (``NNNN_what.py``, whose
    revision is ``NNNN``; tests/unit/test_catalog_revisions.py holds alembic to that). Cheap:
    opening a catalog at the head revision loads no alembic."""
    names = sorted(p.name for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return [name[:4] for name in names]


def head_revision() -> str:
    return known_revisions()[-1]


def revisions() -> list[str]:
    """Every revision, oldest first, as alembic walks them."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    heads = script.get_heads()
    assert len(heads) == 1, f"the catalog migrations have {len(heads)} heads"
    return [str(r.revision) for r in reversed(list(script.walk_revisions()))]


def _current_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def _one_line(e: BaseException) -> str:
    inner = getattr(e, "orig", None) or e
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


class Catalog:
    """An open catalog. Thread-safe: every call takes a connection from the engine's pool."""

    def __init__(self, engine: Engine, url: str, spool: Spool | None = None) -> None:
        self.engine = engine
        self.url = url
        self.spool = spool  # jobs recorded beside an SQLite catalog (spool.py)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, url: str | None = None, *, reap: bool = True) -> Catalog:
        """Open (making an SQLite file when there is none), migrate to the head revision,
        and mark the jobs of dead processes interrupted. Raises CatalogError in one line."""
        url = url or default_catalog_url()
        if url.lower() in OFF:
            raise CatalogError(f"the job catalog is off ({CATALOG_ENV} or --catalog is {url!r})")
        parsed = _parse(url)
        shown = shown_url(url)
        sqlite_path = None
        spool = None
        if parsed.drivername == "sqlite":
            sqlite_path = _prepare_sqlite(parsed, shown)
            spool = Spool(spool_folder(sqlite_path.absolute()))
            engine = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(
                parsed, connect_args={"connect_timeout": 5}, pool_pre_ping=True
            )
        catalog = cls(engine, shown, spool)
        try:
            catalog._migrate(sqlite_path)
            catalog.ingest_pending()
            if reap:
                catalog.reap_interrupted()
        except CatalogError:
            engine.dispose()
            raise
        except (sa.exc.SQLAlchemyError, OSError) as e:
            engine.dispose()
            raise CatalogError(f"cannot open the job catalog {shown}: {_one_line(e)}") from None
        return catalog

    def close(self) -> None:
        self.engine.dispose()

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return _current_revision(conn)

    def _migrate(self, sqlite_path: Path | None) -> None:
        known = known_revisions()
        with _migration_lock(sqlite_path), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # One migrating process at a time when many open a new catalog at once.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7369746)"))
            current = _current_revision(conn)
            if current is not None and current not in known:
                raise CatalogTooNew(
                    f"the job catalog {self.url} has schema revision {current}, "
                    "unknown to this lamina: a newer lamina wrote it (upgrade lamina)"
                )
            if current != known[-1]:
                from alembic import command

                command.upgrade(_alembic_config(conn), "head")

    # ------------------------------------------------------------------ writing

    def _write(self, fn: Any) -> Any:
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except sa.exc.SQLAlchemyError as e:
            raise CatalogError(f"cannot write the job catalog {self.url}: {_one_line(e)}") from None

    def record_job(self, record: JobRecord, message: str = "", at: float | None = None) -> None:
        """Insert a job, or replace its row when it is there; adds a state-change event."""

        def write(conn: Connection) -> None:
            row = record.row()
            exists = conn.execute(sa.select(jobs.c.id).where(jobs.c.id == record.id)).first()
            if exists:
                conn.execute(jobs.update().where(jobs.c.id == record.id).values(**row))
            else:
                conn.execute(jobs.insert().values(**row))
            conn.execute(
                job_events.insert().values(
                    job_id=record.id,
                    at=at or time.time(),
                    state=record.state,
                    message=message,
                )
            )

        self._write(write)

    def ingest_pending(self) -> int:
        """Move the jobs waiting in the spool (spool.py) into the catalog; returns how many
        files were done with. A job's state only moves forward: a live version read after
        its end never makes it live again, though a real end replaces a guessed
        ``interrupted``. A file stays while its job runs; one that cannot be written stays
        for the next try (a read-only catalog is read as it is)."""
        if self.spool is None:
            return 0
        done = 0
        for item in self.spool.pending():
            try:
                finished = self._write(lambda conn, item=item: self._ingest(conn, item))
            except CatalogError:
                continue
            if finished:
                self.spool.remove(item)
                done += 1
        return done

    @staticmethod
    def _ingest(conn: Connection, item: Pending) -> bool:
        """One job of the spool into the catalog; True when its file is no longer needed."""
        record = item.record
        stored = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == record.id)).first()
        live = record.state in LIVE_STATES
        if stored is None:
            conn.execute(jobs.insert().values(**record.row()))
        elif stored.state in LIVE_STATES or (stored.state == INTERRUPTED and not live):
            conn.execute(jobs.update().where(jobs.c.id == record.id).values(**record.row()))
        elif live:
            # Ended in the catalog, live in the file: an old version, or a process that died
            # and was reaped. The file is done with once nothing can write it again.
            return not _may_still_run(record)
        have = {
            (e.at, e.state, e.message)
            for e in conn.execute(
                sa.select(job_events.c.at, job_events.c.state, job_events.c.message).where(
                    job_events.c.job_id == record.id
                )
            )
        }
        for e in item.events:
            if (e.at, e.state, e.message) not in have:
                conn.execute(
                    job_events.insert().values(
                        job_id=record.id, at=e.at, state=e.state, message=e.message
                    )
                )
        return not live

    def heartbeat(self, job_ids: Sequence[str], at: float | None = None) -> None:
        if not job_ids:
            return
        now = at or time.time()
        self._write(
            lambda conn: conn.execute(
                jobs.update().where(jobs.c.id.in_(list(job_ids))).values(heartbeat_at=now)
            )
        )

    def reap_interrupted(self, now: float | None = None) -> list[str]:
        """Mark ``interrupted`` every live job whose process is gone: on this host, a pid
        that is not the same process any more (or another boot); elsewhere, a heartbeat
        older than STALE_AFTER. Returns their ids."""
        now = now or time.time()

        def reap(conn: Connection) -> list[str]:
            live = conn.execute(sa.select(jobs).where(jobs.c.state.in_(LIVE_STATES))).all()
            gone = []
            for row in live:
                r = row._mapping
                if _may_still_run(JobRecord.of_row(row), now):
                    continue
                line = (
                    f"interrupted: its process ({r['host']}, pid {r['pid']}) ended "
                    "without recording an end"
                )
                ended = r["heartbeat_at"] or now
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == r["id"], jobs.c.state.in_(LIVE_STATES))
                    .values(state=INTERRUPTED, ended_at=ended, error=line)
                )
                conn.execute(
                    job_events.insert().values(
                        job_id=r["id"], at=now, state=INTERRUPTED, message=line
                    )
                )
                gone.append(str(r["id"]))
            return gone

        result: list[str] = self._write(reap)
        return result

    def known_points(self) -> set[str]:
        self.ingest_pending()
        with self._reading() as conn:
            rows = conn.execute(sa.select(jobs.c.point).where(jobs.c.point.is_not(None))).all()
        return {str(r[0]) for r in rows}

    # ------------------------------------------------------------------ reading

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as e:
            raise CatalogError(f"cannot read the job catalog {self.url}: {_one_line(e)}") from None

    def history(self, query: HistoryQuery | None = None) -> list[JobRecord]:
        """Jobs, newest first, filtered by ``query``."""
        self.ingest_pending()
        q = query or HistoryQuery()
        statement = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id)
        if q.volume is not None:
            statement = statement.where(jobs.c.volume == q.volume)
        if q.kind is not None:
            statement = statement.where(jobs.c.kind == q.kind)
        if q.since is not None:
            statement = statement.where(jobs.c.created_at >= q.since)
        if q.failed:
            statement = statement.where(jobs.c.state.in_(FAILED_STATES))
        if q.after is not None:
            created, job_id = q.after
            statement = statement.where(
                sa.or_(
                    jobs.c.created_at < created,
                    sa.and_(jobs.c.created_at == created, jobs.c.id > job_id),
                )
            )
        if q.limit is not None:
            statement = statement.limit(q.limit)
        with self._reading() as conn:
            records = [JobRecord.of_row(row) for row in conn.execute(statement)]
            if q.with_events and records:
                by_id = {r.id: r for r in records}
                events = conn.execute(
                    sa.select(job_events)
                    .where(job_events.c.job_id.in_(list(by_id)))
                    .order_by(job_events.c.at, job_events.c.id)
                )
                for e in events:
                    by_id[e.job_id].events.append(JobEvent(e.at, e.state, e.message))
        return records

    def totals(self, repository: str | None, duration_buckets: Sequence[float]) -> CatalogTotals:
        """Sums over the jobs of ``repository`` (None: every job) for the metrics."""
        self.ingest_pending()
        finished = jobs.c.state.not_in(LIVE_STATES)
        where = [] if repository is None else [jobs.c.repository == repository]
        duration = jobs.c.ended_at - jobs.c.started_at
        timed = sa.and_(finished, jobs.c.started_at.is_not(None), jobs.c.ended_at.is_not(None))
        with self._reading() as conn:
            by_kind_state = {
                (str(kind), str(state)): int(n)
                for kind, state, n in conn.execute(
                    sa.select(jobs.c.kind, jobs.c.state, sa.func.count())
                    .where(*where)
                    .group_by(jobs.c.kind, jobs.c.state)
                )
            }
            sums = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(jobs.c.bytes_read), 0),
                    sa.func.coalesce(sa.func.sum(jobs.c.bytes_stored), 0),
                    *[
                        sa.func.coalesce(sa.func.sum(jobs.c[f"requests_{op}"]), 0)
                        for op in REQUEST_OPS
                    ],
                ).where(finished, *where)
            ).one()
            histogram: dict[str, tuple[list[int], int, float]] = {}
            rows = conn.execute(
                sa.select(
                    jobs.c.kind,
                    *[
                        sa.func.sum(sa.case((duration <= le, 1), else_=0))
                        for le in duration_buckets
                    ],
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(duration), 0.0),
                )
                .where(timed, *where)
                .group_by(jobs.c.kind)
            )
            for row in rows:
                values = list(row)
                histogram[str(values[0])] = (
                    [int(v or 0) for v in values[1 : 1 + len(duration_buckets)]],
                    int(values[-2]),
                    float(values[-1]),
                )
            last_success = self._last_successes(conn, where)
        return CatalogTotals(
            jobs=by_kind_state,
            bytes_read=int(sums[0]),
            bytes_stored=int(sums[1]),
            requests={op: int(sums[2 + i]) for i, op in enumerate(REQUEST_OPS)},
            durations=histogram,
            last_success=last_success,
        )

    def last_successes(
        self, repositories: Sequence[str] | None = None, volumes: Sequence[str] | None = None
    ) -> dict[str, float]:
        """The end of the newest successful backup of each volume, in one query: of the
        jobs of ``repositories`` (None: of any) and of ``volumes`` (None: every volume)."""
        self.ingest_pending()
        where: list[Any] = []
        if repositories is not None:
            where.append(jobs.c.repository.in_(list(repositories)))
        if volumes is not None:
            where.append(jobs.c.volume.in_(list(volumes)))
        with self._reading() as conn:
            return self._last_successes(conn, where)

    @staticmethod
    def _last_successes(conn: Connection, where: Sequence[Any]) -> dict[str, float]:
        return {
            str(volume): float(at)
            for volume, at in conn.execute(
                sa.select(jobs.c.volume, sa.func.max(jobs.c.ended_at))
                .where(
                    jobs.c.kind == "backup",
                    jobs.c.state == "succeeded",
                    jobs.c.volume.is_not(None),
                    *where,
                )
                .group_by(jobs.c.volume)
            )
            if at is not None
        }

    def job(self, job_id: str) -> JobRecord | None:
        self.ingest_pending()
        with self._reading() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            record = JobRecord.of_row(row)
            for e in conn.execute(
                sa.select(job_events)
                .where(job_events.c.job_id == job_id)
                .order_by(job_events.c.at, job_events.c.id)
            ):
                record.events.append(JobEvent(e.at, e.state, e.message))
        return record


def _may_still_run(record: JobRecord, now: float | None = None) -> bool:
    """Whether the process that recorded ``record`` may still write it: as ``reap_interrupted``
    tells a dead one, by its identity on this host and by its heartbeat elsewhere."""
    if record.host == current_process().host:
        return is_alive_here(int(record.pid), record.boot_id, record.process_start)
    beat = record.heartbeat_at or record.started_at or record.created_at
    return (now or time.time()) - float(beat) <= STALE_AFTER


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (lamina history, /metrics) never wait for a writing job.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _prepare_sqlite(url: URL, shown: str) -> Path:
    """The SQLite file of ``url``, its folder made; refuse one that cannot be written, in a line."""
    if not url.database or url.database == ":memory:":
        raise UsageError("an SQLite catalog needs a file: sqlite:///PATH")
    path = Path(url.database)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise CatalogError(
            f"cannot make the folder of the job catalog {shown}: {e.strerror}"
        ) from None
    if path.exists() and not path.is_file():
        raise CatalogError(f"the job catalog {shown} is not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise CatalogError(f"the job catalog {shown} is read-only")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CatalogError(f"the folder of the job catalog {shown} is read-only")
    return path


@contextmanager
def _migration_lock(sqlite_path: Path | None) -> Iterator[None]:
    """Many processes opening one new SQLite file at once migrate it one at a time."""
    if sqlite_path is None:
        yield
        return
    # A file of its own: closing a descriptor of the database file would drop the POSIX
    # locks SQLite holds on it in this process.
    fd = os.open(sqlite_path.with_name(sqlite_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
