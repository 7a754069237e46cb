"""Alembic environment for the events table.

Run through ``notifications.migrate.upgrade`` (at start-up or ``flask notifications migrate``),
which passes the connection and the table name in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
table = config.attributes.get("table", "notification_events")
schema = config.attributes.get("schema")

context.configure(
    connection=connection,
    version_table=f"{table}_alembic_version",
    version_table_schema=schema,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
