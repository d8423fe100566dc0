"""Schedules that also copy: after a backup, the volume's points go to another repository.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as table:
        table.add_column(sa.Column("copy_to", sa.Text, nullable=True))
        table.add_column(sa.Column("copy_password_file", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as table:
        table.drop_column("copy_password_file")
        table.drop_column("copy_to")
