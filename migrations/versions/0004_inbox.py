"""The inbox: notifications kept with per-user read state (items, marks, read-up-to cursors,
the last position handed out per target).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
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
        f"{name}_inbox",
        sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Text, nullable=False),  # '' for everyone
        sa.Column("channel", sa.String(128), nullable=False),  # '' for no channel
        sa.Column("data", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("seq", sa.BigInteger, nullable=False),
        schema=schema,
    )
    op.create_index(
        f"ix_{name}_inbox_target",
        f"{name}_inbox",
        ["user_id", "channel", "event_id"],
        schema=schema,
        postgresql_include=["seq"],
    )
    op.create_index(f"ix_{name}_inbox_created_at", f"{name}_inbox", ["created_at"], schema=schema)
    op.create_table(
        f"{name}_inbox_marks",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("read", sa.Boolean, nullable=True),
        sa.Column("dismissed", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=schema,
    )
    op.create_index(f"ix_{name}_inbox_marks_event_id", f"{name}_inbox_marks", ["event_id"], schema=schema)
    op.create_table(
        f"{name}_inbox_cursors",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("read_upto", sa.BigInteger, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{name}_inbox_targets",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("channel", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    name, schema = _table(), _schema()
    op.drop_table(f"{name}_inbox_targets", schema=schema)
    op.drop_table(f"{name}_inbox_cursors", schema=schema)
    op.drop_index(f"ix_{name}_inbox_marks_event_id", table_name=f"{name}_inbox_marks", schema=schema)
    op.drop_table(f"{name}_inbox_marks", schema=schema)
    op.drop_index(f"ix_{name}_inbox_created_at", table_name=f"{name}_inbox", schema=schema)
    op.drop_index(f"ix_{name}_inbox_target", table_name=f"{name}_inbox", schema=schema)
    op.drop_table(f"{name}_inbox", schema=schema)
