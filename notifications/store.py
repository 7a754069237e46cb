"""The events table in PostgreSQL (SQLAlchemy Core): append, read since, newest id, prune.

Appending puts the events in the publish queue (``<table>_queue``): one INSERT, no lock, no
NOTIFY, so publishers never wait for one another, however long the transaction they join stays
open. Each queued row draws a provisional id from the events table's sequence; the sequencer
(``sequencer``, one per database) moves committed rows into the events table in the order they
became visible, keeping the provisional id unless a higher id was delivered meanwhile (then the
event gets a new, higher one), and rings the listeners' doorbell. Only the sequencer writes the
events table, one transaction at a time, so ids grow in commit order and a reader that keeps
``id > cursor`` never skips an event that commits late.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.exc import DisconnectionError

from .events import Event
from .prepared import PreparedStatements
from .schema import Names, define_tables

BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the events table, with its data as compact JSON text."""

    id: int
    name: str
    data: str
    user_id: str | None
    channel: str | None
    created_at: float = 0.0  # epoch seconds (the publishing transaction's start)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_item(e: Event) -> str:
    user = "null" if e.user_id is None else compact_json(e.user_id)
    channel = "null" if e.channel is None else f'"{e.channel}"'
    return f'["{e.name}",{e.data},{user},{channel},{"true" if e.inbox else "false"}]'


class EventStore:
    """Reads and writes the events table through one SQLAlchemy engine."""

    def __init__(self, engine: Engine, names: Names | None = None, autocommit: Engine | None = None) -> None:
        self.engine = engine
        self.names = names = names or Names()
        tables = define_tables(names=names)
        self.events, self.state = tables.events, tables.state
        self.channel = names.channel  # the NOTIFY channel
        # Every row in one INSERT, in the batch's order (the provisional ids follow it), from
        # one JSON parameter (``_append_params``). (``inbox``: the notification goes into the
        # inbox too, when the sequencer delivers it.)
        self._append_sql = (
            f"INSERT INTO {names.sql('_queue')} (event, data, user_id, channel, inbox) "
            "SELECT e->>0, e->1, e->>2, e->>3, CAST(e->>4 AS boolean) "
            "FROM jsonb_array_elements(CAST(%(batch)s AS jsonb)) WITH ORDINALITY AS batch(e, position) "
            "ORDER BY position RETURNING id"
        )
        # Standalone appends run in autocommit mode: a pool of their own (``autocommit``) keeps
        # its connections there, instead of switching a shared connection at every checkout.
        # (Also the inbox's pool for its single-statement reads.)
        self.autocommit = autocommit or engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statements = PreparedStatements("publish")
        cols = self.events.c
        self._since = (
            select(
                cols.id,
                cols.event,
                cols.data,
                cols.user_id,
                cols.channel,
                func.extract("epoch", cols.created_at).label("created"),
            )
            .where(cols.id > bindparam("after"))
            .order_by(cols.id)
            .limit(bindparam("limit"))
        )

    # -- writing ---------------------------------------------------------------------------

    def append_in(self, conn: Connection, events: Sequence[Event]) -> list[str]:
        """Queue events inside the caller's transaction (any engine on this database): one
        INSERT of every row. They are delivered once it commits; return their provisional ids."""
        ids = conn.exec_driver_sql(self._append_sql, self._append_params(events)).scalars().all()
        return [str(i) for i in sorted(ids)]  # drawn in the unnest order

    def append(self, events: Sequence[Event]) -> list[str]:
        """Queue events in one short transaction of their own (all or nothing): one statement
        in autocommit, committed by the server, prepared once per pooled connection (planning
        the INSERT cost about a third of a publish)."""
        with self.autocommit.connect() as conn:
            ids = [row[0] for row in self.statements.run(conn, self._append_sql, self._append_params(events))]
        return [str(i) for i in sorted(ids)]

    @staticmethod
    def _append_params(events: Sequence[Event]) -> dict[str, str]:
        """The batch as one JSON array of ``[event, data, user_id, channel, inbox]``: one text
        the server parses at once (five arrays of 1,000 values cost the client four times the
        CPU, and the server as much again). Event and channel names are validated to letters,
        digits and ``_ . : -``, so they need no escaping; ``data`` is JSON already."""
        return {"batch": f"[{','.join(map(_json_item, events))}]"}

    # -- reading ---------------------------------------------------------------------------

    def read_since(self, conn: Connection, after: int, limit: int = BATCH) -> list[StoredEvent]:
        """Every event with ``id > after``, in id order, at most ``limit``."""
        rows = conn.execute(self._since, {"after": after, "limit": limit})
        return [StoredEvent(r.id, r.event, compact_json(r.data), r.user_id, r.channel, float(r.created)) for r in rows]

    def replay(self, after: int, upto: int, user_id: str, channels: Sequence[str]) -> Iterator[StoredEvent]:
        """The events in ``(after, upto]`` that a stream of ``user_id`` + ``channels`` may see."""
        c = self.events.c
        own_or_broadcast = or_(c.user_id.is_(None), c.user_id == user_id)
        in_channels = c.channel.in_(list(channels)) if channels else false()
        visible = and_(own_or_broadcast, or_(c.channel.is_(None), in_channels))
        cursor = after
        while cursor < upto:
            stmt = (
                select(c.id, c.event, c.data, c.user_id, c.channel)
                .where(c.id > cursor, c.id <= upto, visible)
                .order_by(c.id)
                .limit(BATCH)
            )
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
            for r in rows:
                yield StoredEvent(r.id, r.event, compact_json(r.data), r.user_id, r.channel)
            if len(rows) < BATCH:
                return
            cursor = rows[-1].id

    def newest_id(self, conn: Connection | None = None, queued: bool = False) -> int:
        """The highest id ever delivered (pruned ones included), 0 before the first event; with
        ``queued``, also the ids publishers were given that wait for the sequencer."""
        if conn is None:
            with self.engine.connect() as own:
                return self.newest_id(own, queued)
        newest = conn.execute(select(func.coalesce(func.max(self.events.c.id), 0))).scalar_one()
        if queued:
            waiting = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {self.names.sql('_queue')}").scalar_one()
            newest = max(newest, waiting)
        return max(int(newest), self.pruned_through(conn))

    def pruned_through(self, conn: Connection) -> int:
        """The highest id deleted by pruning (0 if nothing was ever pruned)."""
        value = conn.execute(select(self.state.c.value).where(self.state.c.key == "pruned_through")).scalar()
        return int(value or 0)

    def stats(self) -> dict[str, Any]:
        """Counts for ``flask notifications stats``."""
        c = self.events.c
        with self.engine.connect() as conn:
            row = conn.execute(select(func.count(), func.min(c.id), func.max(c.id))).one()
            queued = conn.exec_driver_sql(f"SELECT count(*) FROM {self.names.sql('_queue')}").scalar_one()
            return {
                "events": int(row[0]),
                "queued": int(queued),  # committed, waiting for the sequencer (a running worker)
                "oldest_id": None if row[1] is None else str(row[1]),
                "newest_id": None if row[2] is None else str(row[2]),
                "pruned_through": str(self.pruned_through(conn)),
            }

    # -- pruning ---------------------------------------------------------------------------

    def prune(self, older_than: float | None, max_events: int | None, batch: int = 5000) -> int:
        """Delete events older than ``older_than`` seconds and beyond the newest ``max_events``,
        in small batches that never wait on publishers; return how many were deleted."""
        c = self.events.c
        deleted = 0
        while True:
            with self.engine.begin() as conn:
                bound = None
                if max_events is not None:
                    bound = conn.execute(select(c.id).order_by(c.id.desc()).offset(max_events).limit(1)).scalar()
                conditions = []
                if older_than is not None:
                    conditions.append(c.created_at < func.now() - timedelta(seconds=older_than))
                if bound is not None:
                    conditions.append(c.id <= bound)
                if not conditions:
                    return deleted
                victims = (
                    select(c.id).where(or_(*conditions)).order_by(c.id).limit(batch).with_for_update(skip_locked=True)
                )
                ids = (
                    conn.execute(delete(self.events).where(c.id.in_(victims.scalar_subquery())).returning(c.id))
                    .scalars()
                    .all()
                )
                if not ids:
                    return deleted
                top = max(ids)
                conn.execute(
                    text(
                        f"INSERT INTO {self.names.sql('_state')} AS s (key, value) VALUES ('pruned_through', :v) "
                        "ON CONFLICT (key) DO UPDATE SET value = GREATEST(EXCLUDED.value, s.value)"
                    ),
                    {"v": top},
                )
                deleted += len(ids)
                if len(ids) < batch:
                    return deleted


def make_engine(url: str, pool_size: int, **options: Any) -> Engine:
    """An engine on ``url`` with ``pool_size`` connections (as many again in overflow) that
    checks a connection before use only when it sat idle (``ping_when_idle``)."""
    options.setdefault("pool_size", pool_size)
    options.setdefault("max_overflow", pool_size)
    engine = create_engine(url, **options)
    ping_when_idle(engine)
    return engine


IDLE_PING_AFTER = 1.0


def ping_when_idle(engine: Engine, after: float = IDLE_PING_AFTER) -> None:
    """Check a pooled connection before use if it sat idle for ``after`` seconds (a restarted
    database leaves dead connections in the pool), and hand out another if it is dead: like
    ``pool_pre_ping``, without a round trip per publish when connections are busy."""

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the pooled connection is dead") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)
