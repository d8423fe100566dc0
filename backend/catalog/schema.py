"""The catalog's tables as SQLAlchemy Core objects, for queries.

The schema itself is made and changed only by the Alembic migrations in ``migrations/``;
these objects describe the head revision and must match it (tests/functional/test_catalog.py
compares them with a migrated database).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# Request operations counted per job (docs/catalog.md, "Requests and cost"), for the columns.
from .records import REQUEST_OPS as REQUEST_OPS

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("repository", Text, nullable=False, default=""),
    Column("volume", Text, nullable=True),
    Column("point", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("bytes_read", BigInteger, nullable=False, default=0),
    Column("bytes_stored", BigInteger, nullable=False, default=0),
    Column("bytes_deduplicated", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("origin", String(16), nullable=False, default="cli"),
    Column("host", Text, nullable=False, default=""),
    Column("pid", Integer, nullable=False, default=0),
    Column("boot_id", String(64), nullable=False, default=""),
    Column("process_start", String(32), nullable=False, default=""),
    # Revision 0002: requests and cost.
    *[Column(f"requests_{op}", BigInteger, nullable=False, default=0) for op in REQUEST_OPS],
    Column("retries", BigInteger, nullable=False, default=0),
    Column("bytes_up", BigInteger, nullable=False, default=0),
    Column("bytes_down", BigInteger, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
)

# Revision 0003: schedules (docs/schedules.md).
schedules = Table(
    "schedules",
    metadata,
    Column("name", String(253), primary_key=True),
    Column("kind", String(16), nullable=False),  # "backup" or "prune"
    Column("repository", Text, nullable=False),
    Column("password_file", Text, nullable=True),
    Column("local_root", Text, nullable=True),
    Column("volume", Text, nullable=True),  # NAMESPACE/NAME in the local cluster
    Column("source", Text, nullable=True),  # the image file or block device
    Column("every_seconds", Float, nullable=True),
    Column("cron", Text, nullable=True),
    Column("retention", Text, nullable=False, default="{}"),  # JSON: the --keep-* options
    Column("paused", Boolean, nullable=False, default=False),
    Column("run_once", Boolean, nullable=False, default=False),  # run-now of a paused one
    Column("created_at", Float, nullable=False),
    # The slot to run next; a controller claims it by moving it on (UPDATE ... WHERE
    # next_run = the value it read), so one slot runs once however many controllers race.
    Column("next_run", Float, nullable=False),
    Column("last_run", Float, nullable=True),
    Column("last_state", String(16), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_jobs", Text, nullable=True),  # space-separated job ids of the last run
    Column("claimed_by", Text, nullable=True),  # host:pid of the controller of the last run
    # Revision 0004: after each backup, copy the volume's points to this repository.
    Column("copy_to", Text, nullable=True),
    Column("copy_password_file", Text, nullable=True),
)


# Revision 0005: the cached point list of each repository (docs/catalog.md, "The point
# list"). A point's row holds its manifest as JSON and, for one-query volume summaries, the
# fields they need; the state row names the repository's point list marker it is current
# under, and when the repository was last listed in full.
point_list_state = Table(
    "point_list_state",
    metadata,
    Column("repository_id", String(64), primary_key=True),
    Column("marker", Text, nullable=False),
    Column("points", Integer, nullable=False),
    Column("reconciled_at", Float, nullable=False),
)

point_list = Table(
    "point_list",
    metadata,
    Column("repository_id", String(64), primary_key=True),
    Column("point_id", String(64), primary_key=True),
    Column("etag", Text, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("parent", String(64), nullable=True),
    Column("created", String(64), nullable=False),
    Column("capacity", BigInteger, nullable=False),
    Column("bytes_uploaded", BigInteger, nullable=False),
    Column("manifest", Text, nullable=False),
    Index("point_list_volume", "repository_id", "cluster", "namespace", "name", "created"),
)
