"""The events table in PostgreSQL (SQLAlchemy Core): append, read since, newest id, prune.

Commit order equals id order: every append takes one transaction-level advisory lock right
before its INSERT and holds it to commit, so ids are handed out in the order their
transactions become visible. A reader that keeps ``id > cursor`` therefore never skips an
event that commits late. The cost: appends are serialised from the INSERT to the end of the
commit (about 1,000 transactions/s on one PostgreSQL; batch appends amortise it).
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
from .locks import publish_key
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


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class EventStore:
    """Reads and writes the events table through one SQLAlchemy engine."""

    def __init__(self, engine: Engine, names: Names | None = None, autocommit: Engine | None = None) -> None:
        self.engine = engine
        self.names = names = names or Names()
        tables = define_tables(names=names)
        self.events, self.state = tables.events, tables.state
        self.channel = names.channel  # the NOTIFY channel
        self.lock_key = publish_key(names)
        # Lock, INSERT of every row and one NOTIFY as one multi-statement query: one round trip,
        # and the lock is held only while the server works, never across a client round trip.
        insert = (
            f"INSERT INTO {names.sql()} (event, data, user_id, channel) "
            "SELECT name, CAST(data AS jsonb), user_id, channel FROM unnest("
            "CAST(%(names)s AS text[]), CAST(%(datas)s AS text[]), "
            "CAST(%(users)s AS text[]), CAST(%(channels)s AS text[])"
            ") WITH ORDINALITY AS batch(name, data, user_id, channel, position) ORDER BY position "
        )
        doorbell = (
            "doorbell AS (SELECT pg_notify(%(channel)s, (SELECT max(id) FROM ins)::text)) "
            "SELECT ins.id FROM ins, doorbell ORDER BY ins.id"
        )
        lock = "SELECT pg_advisory_xact_lock(%(key)s); "
        self._append_sql = f"{lock}WITH ins AS ({insert}RETURNING id), {doorbell}"
        # The same with inbox notifications among the events: their rows go into the inbox table
        # too, in the same statement (so in the same transaction), matched by batch position, each
        # with the next position (``seq``) of its target ('' for no user or no channel), handed
        # out under the publish lock: see ``inbox_store``.
        target = "coalesce(r.user_id, ''), coalesce(r.channel, '')"
        self._append_inbox_sql = (
            f"{lock}WITH ins AS ({insert}RETURNING id, data, user_id, channel, created_at), "
            "boxed AS (SELECT r.id, coalesce(r.user_id, '') AS u, coalesce(r.channel, '') AS c, r.data, r.created_at, "
            f"row_number() OVER (PARTITION BY {target} ORDER BY r.id) AS k, "
            f"count(*) OVER (PARTITION BY {target}) AS n FROM "
            "(SELECT *, row_number() OVER (ORDER BY id) AS position FROM ins) AS r "
            "JOIN unnest(CAST(%(boxes)s AS boolean[])) WITH ORDINALITY AS f(inbox, position) USING (position) "
            "WHERE f.inbox), "
            f"tgt AS (INSERT INTO {names.sql('_inbox_targets')} AS t (user_id, channel, seq) "
            "SELECT u, c, max(n) FROM boxed GROUP BY u, c "
            "ON CONFLICT (user_id, channel) DO UPDATE SET seq = t.seq + EXCLUDED.seq RETURNING user_id, channel, seq), "
            f"box AS (INSERT INTO {names.sql('_inbox')} (event_id, user_id, channel, data, created_at, seq) "
            "SELECT b.id, b.u, b.c, b.data, b.created_at, t.seq - b.n + b.k "
            "FROM boxed b JOIN tgt t ON t.user_id = b.u AND t.channel = b.c), "
            f"{doorbell}"
        )
        # Standalone appends run in autocommit mode: a pool of their own (``autocommit``) keeps
        # its connections there, instead of switching a shared connection at every checkout.
        # (Also the inbox's pool for its single-statement reads.)
        self.autocommit = autocommit or engine.execution_options(isolation_level="AUTOCOMMIT")
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
        """Append inside the caller's transaction (any engine on this database): one INSERT of
        every row (inbox notifications into the inbox table too), one NOTIFY. The lock is held
        to commit: call it late in long transactions."""
        params: dict[str, Any] = {
            "key": self.lock_key,
            "names": [e.name for e in events],
            "datas": [e.data for e in events],
            "users": [e.user_id for e in events],
            "channels": [e.channel for e in events],
            "channel": self.channel,
        }
        sql = self._append_sql
        if any(e.inbox for e in events):
            sql = self._append_inbox_sql
            params["boxes"] = [e.inbox for e in events]
        ids = conn.exec_driver_sql(sql, params).scalars().all()
        return [str(i) for i in ids]  # identity values follow the unnest order

    def append(self, events: Sequence[Event]) -> list[str]:
        """Append events in one short transaction of their own (all or nothing): the
        multi-statement query runs as one implicit transaction, committed by the server."""
        with self.autocommit.connect() as conn:
            return self.append_in(conn, events)

    # -- reading ---------------------------------------------------------------------------

    def read_since(self, conn: Connection, after: int, limit: int = BATCH) -> list[StoredEvent]:
        """Every event with ``id > after``, in id order, at most ``limit``."""
        rows = conn.execute(self._since, {"after": after, "limit": limit})
        return [StoredEvent(r.id, r.event, _compact(r.data), r.user_id, r.channel, float(r.created)) for r in rows]

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
                yield StoredEvent(r.id, r.event, _compact(r.data), r.user_id, r.channel)
            if len(rows) < BATCH:
                return
            cursor = rows[-1].id

    def newest_id(self, conn: Connection | None = None) -> int:
        """The highest id ever stored (pruned ones included), 0 before the first event."""
        if conn is None:
            with self.engine.connect() as own:
                return self.newest_id(own)
        newest = conn.execute(select(func.coalesce(func.max(self.events.c.id), 0))).scalar_one()
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
            return {
                "events": int(row[0]),
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
