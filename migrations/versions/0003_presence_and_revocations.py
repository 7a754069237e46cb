"""Presence by channel (the channels of each open stream) and token revocations.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _table() -> str:
    return str(context.config.attributes.get("table", "notification_events"))


def _schema() -> str | None:
    value = context.config.attributes.get("schema")
    return None if value is None else str(value)


def upgrade() -> None:
    name, schema = _table(), _schema()
    op.add_column(
        f"{name}_streams",
        sa.Column("channels", ARRAY(sa.Text), nullable=False, server_default="{}"),
        schema=schema,
    )
    op.create_table(
        f"{name}_revocations",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("revoked_at", sa.Float, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    name, schema = _table(), _schema()
    op.drop_table(f"{name}_revocations", schema=schema)
    op.drop_column(f"{name}_streams", "channels", schema=schema)
