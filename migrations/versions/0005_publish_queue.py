"""The publish queue: publishers insert here without a lock; the sequencer moves the rows into
the events table in delivery order (``notifications.sequencer``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _table() -> str:
    return str(context.config.attributes.get("table", "notification_events"))


def _schema() -> str | None:
    value = context.config.attributes.get("schema")
    return None if value is None else str(value)


def upgrade() -> None:
    name, schema = _table(), _schema()
    qualified = f'"{schema}"."{name}"' if schema else f'"{name}"'
    # Queued rows draw their (provisional) ids from the events table's own sequence.
    sequence = op.get_bind().execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": qualified}).scalar_one()
    op.create_table(
        f"{name}_queue",
        sa.Column("id", sa.BigInteger, primary_key=True, server_default=sa.text(f"nextval('{sequence}'::regclass)")),
        sa.Column("event", sa.String(128), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("channel", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("inbox", sa.Boolean, nullable=False, server_default=sa.false()),  # into the inbox too
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table(f"{_table()}_queue", schema=_schema())
