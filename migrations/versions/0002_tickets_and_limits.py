"""Stream tickets, open streams per user, connection-rate windows and worker leases.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
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
        f"{name}_tickets",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("grants", JSONB, nullable=False),
        sa.Column("token_expires_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{name}_workers",
        sa.Column("worker", sa.String(128), primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        f"{name}_streams",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index(f"ix_{name}_streams_user_id", f"{name}_streams", ["user_id"], schema=schema)
    op.create_table(
        f"{name}_rates",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("window", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    name, schema = _table(), _schema()
    op.drop_table(f"{name}_rates", schema=schema)
    op.drop_index(f"ix_{name}_streams_user_id", table_name=f"{name}_streams", schema=schema)
    op.drop_table(f"{name}_streams", schema=schema)
    op.drop_table(f"{name}_workers", schema=schema)
    op.drop_table(f"{name}_tickets", schema=schema)
