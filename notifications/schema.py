"""The tables, in one place: for the store, for raw SQL, and for a host app's Alembic.

A host app that manages its own migrations adds them to its metadata and lets autogenerate
write them::

    from notifications.schema import define_tables
    define_tables(db.metadata)                  # or define_tables(metadata, Names("events", "app"))

Otherwise the extension's own migrations create them (``flask notifications migrate``, or at
start-up), tracked in their own version table ``<table>_alembic_version``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB


@dataclass(frozen=True)
class Names:
    """Where the tables live: ``table`` (the events table; the others share it as a prefix)
    in ``schema`` (None: the search path)."""

    table: str = "notification_events"
    schema: str | None = None

    def sql(self, suffix: str = "") -> str:
        """The quoted, schema-qualified name of ``table + suffix`` for raw SQL."""
        name = f'"{self.table}{suffix}"'
        return f'"{self.schema}".{name}' if self.schema else name

    @property
    def sequence(self) -> str:
        """The events table's id sequence (PostgreSQL's name for an identity column's)."""
        name = f'"{self.table}_id_seq"'
        return f'"{self.schema}".{name}' if self.schema else name

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this events table."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(frozen=True)
class Tables:
    events: Table
    state: Table
    tickets: Table
    workers: Table
    streams: Table
    rates: Table
    revocations: Table
    inbox: Table
    inbox_marks: Table
    inbox_cursors: Table
    inbox_targets: Table
    queue: Table


def define_tables(metadata: MetaData | None = None, names: Names | None = None) -> Tables:
    """Declare every table of the extension on ``metadata``."""
    metadata = metadata if metadata is not None else MetaData()
    n = names or Names()
    t, schema = n.table, n.schema
    return Tables(
        events=Table(
            t,
            metadata,
            Column("id", BigInteger, Identity(always=False), primary_key=True),
            Column("event", String(128), nullable=False),
            Column("data", JSONB, nullable=False),
            Column("user_id", Text, nullable=True),
            Column("channel", String(128), nullable=True),
            Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Index(f"ix_{t}_created_at", "created_at"),
            schema=schema,
        ),
        state=Table(
            f"{t}_state",
            metadata,
            Column("key", String(64), primary_key=True),
            Column("value", BigInteger, nullable=False),
            schema=schema,
        ),
        tickets=Table(
            f"{t}_tickets",
            metadata,
            Column("digest", String(64), primary_key=True),
            Column("subject", Text, nullable=False),
            Column("grants", JSONB, nullable=False),
            Column("token_expires_at", Float, nullable=True),
            Column("expires_at", DateTime(timezone=True), nullable=False),
            schema=schema,
        ),
        workers=Table(
            f"{t}_workers",
            metadata,
            Column("worker", String(128), primary_key=True),
            Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            schema=schema,
        ),
        streams=Table(
            f"{t}_streams",
            metadata,
            Column("id", BigInteger, Identity(always=False), primary_key=True),
            Column("user_id", Text, nullable=False),
            Column("worker", String(128), nullable=False),
            Column("opened_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Column("channels", ARRAY(Text), nullable=False, server_default="{}"),
            Index(f"ix_{t}_streams_user_id", "user_id"),
            schema=schema,
        ),
        rates=Table(
            f"{t}_rates",
            metadata,
            Column("key", Text, primary_key=True),
            Column("window", BigInteger, primary_key=True),
            Column("count", Integer, nullable=False),
            schema=schema,
        ),
        queue=Table(
            f"{t}_queue",
            metadata,
            # provisional ids from the events table's sequence (see ``sequencer``)
            Column("id", BigInteger, primary_key=True, server_default=text(f"nextval('{n.sequence}'::regclass)")),
            Column("event", String(128), nullable=False),
            Column("data", JSONB, nullable=False),
            Column("user_id", Text, nullable=True),
            Column("channel", String(128), nullable=True),
            Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Column("inbox", Boolean, nullable=False, server_default=false()),  # into the inbox too
            schema=schema,
        ),
        revocations=Table(
            f"{t}_revocations",
            metadata,
            Column("user_id", Text, primary_key=True),
            Column("revoked_at", Float, nullable=False),  # epoch seconds: tokens issued before are void
            schema=schema,
        ),
        # An inbox notification, stored once whoever it reaches (its event's own targeting), with
        # a copy of its data: it outlives the events row (NOTIFICATIONS_INBOX_RETENTION), so no
        # foreign key to the events table. No user or no channel is '' (never a valid id or
        # name), not NULL: every query is then equalities on the index, read in its order.
        inbox=Table(
            f"{t}_inbox",
            metadata,
            Column("event_id", BigInteger, primary_key=True, autoincrement=False),
            Column("user_id", Text, nullable=False),
            Column("channel", String(128), nullable=False),
            Column("data", JSONB, nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Column("seq", BigInteger, nullable=False),  # 1, 2, 3, ... within its (user_id, channel)
            # every query walks (user or none, channel or none) ranges of this one index, newest first
            Index(f"ix_{t}_inbox_target", "user_id", "channel", "event_id", postgresql_include=["seq"]),
            Index(f"ix_{t}_inbox_created_at", "created_at"),
            schema=schema,
        ),
        # One user's own state of one item, where it differs from the cursor: read (true), unread
        # (false) or as the cursor says (null); dismissed.
        inbox_marks=Table(
            f"{t}_inbox_marks",
            metadata,
            Column("user_id", Text, primary_key=True),
            Column("event_id", BigInteger, primary_key=True, autoincrement=False),
            Column("read", Boolean, nullable=True),
            Column("dismissed", Boolean, nullable=False, server_default=false()),
            Index(f"ix_{t}_inbox_marks_event_id", "event_id"),
            schema=schema,
        ),
        # One user's "read up to": every item with an id at or below it is read unless marked unread.
        inbox_cursors=Table(
            f"{t}_inbox_cursors",
            metadata,
            Column("user_id", Text, primary_key=True),
            Column("read_upto", BigInteger, nullable=False),
            schema=schema,
        ),
        # The last ``seq`` handed out for each (user_id, channel) of the inbox.
        inbox_targets=Table(
            f"{t}_inbox_targets",
            metadata,
            Column("user_id", Text, primary_key=True),
            Column("channel", String(128), primary_key=True),
            Column("seq", BigInteger, nullable=False),
            schema=schema,
        ),
    )
