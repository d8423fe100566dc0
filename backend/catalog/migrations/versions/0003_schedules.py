"""Schedules: what lamina controller --local runs, when, and how each slot is claimed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("repository", sa.Text, nullable=False),
        sa.Column("password_file", sa.Text, nullable=True),
        sa.Column("local_root", sa.Text, nullable=True),
        sa.Column("volume", sa.Text, nullable=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("every_seconds", sa.Float, nullable=True),
        sa.Column("cron", sa.Text, nullable=True),
        sa.Column("retention", sa.Text, nullable=False, server_default="{}"),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("run_once", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("next_run", sa.Float, nullable=False),
        sa.Column("last_run", sa.Float, nullable=True),
        sa.Column("last_state", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_jobs", sa.Text, nullable=True),
        sa.Column("claimed_by", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("schedules")
