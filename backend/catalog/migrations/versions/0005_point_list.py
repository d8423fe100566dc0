"""The cached point list of each repository: its points' manifests, with the fields volume
summaries need, and the point list marker they are current under.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "point_list_state",
        sa.Column("repository_id", sa.String(64), primary_key=True),
        sa.Column("marker", sa.Text, nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("reconciled_at", sa.Float, nullable=False),
    )
    op.create_table(
        "point_list",
        sa.Column("repository_id", sa.String(64), primary_key=True),
        sa.Column("point_id", sa.String(64), primary_key=True),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("cluster", sa.Text, nullable=False),
        sa.Column("namespace", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("created", sa.String(64), nullable=False),
        sa.Column("capacity", sa.BigInteger, nullable=False),
        sa.Column("bytes_uploaded", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
    )
    op.create_index(
        "point_list_volume",
        "point_list",
        ["repository_id", "cluster", "namespace", "name", "created"],
    )


def downgrade() -> None:
    op.drop_index("point_list_volume", table_name="point_list")
    op.drop_table("point_list")
    op.drop_table("point_list_state")
