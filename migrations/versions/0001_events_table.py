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


def upgrade() -> None:
    name = _table()
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("event", sa.String(128), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("channel", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(f"ix_{name}_created_at", name, ["created_at"])
    op.create_table(
        f"{name}_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    name = _table()
    op.drop_table(f"{name}_state")
    op.drop_index(f"ix_{name}_created_at", table_name=name)
    op.drop_table(name)
