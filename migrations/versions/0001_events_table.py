"""The events table and its state table.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _table() -> str:
    return str(context.config.attributes.get("table", "notification_events"))


def _schema() -> str | None:
    value = context.config.attributes.get("schema")
    return None if value is None else str(value)


def upgrade() -> None:
    name, schema = _table(), _schema()
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("event", sa.String(128), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("channel", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index(f"ix_{name}_created_at", name, ["created_at"], schema=schema)
    op.create_table(
        f"{name}_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    name, schema = _table(), _schema()
    op.drop_table(f"{name}_state", schema=schema)
    op.drop_index(f"ix_{name}_created_at", table_name=name, schema=schema)
    op.drop_table(name, schema=schema)
