"""Requests by operation, retries, bytes up and down and the estimated cost of each job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COUNTERS = [
    "requests_put",
    "requests_get",
    "requests_head",
    "requests_list",
    "requests_delete",
    "requests_copy",
    "retries",
    "bytes_up",
    "bytes_down",
]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in _COUNTERS:
            batch.add_column(sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in [*_COUNTERS, "cost_usd"]:
            batch.drop_column(name)
