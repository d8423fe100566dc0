"""The catalog's tables as SQLAlchemy Core objects, for queries.

The schema itself is made and changed only by the Alembic migrations in ``migrations/``;
these objects describe the head revision and must match it (tests/functional/test_catalog.py
compares them with a migrated database).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: Request operations counted per job (docs/catalog.md, "Requests and cost").
REQUEST_OPS = ("put", "get", "head", "list", "delete", "copy")

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
