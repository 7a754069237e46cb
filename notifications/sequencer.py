"""The sequencer: one per database, elected among every worker of every machine, it gives
committed events their delivery order.

Publishers only insert into the publish queue (``store.EventStore.append_in``): no lock, no
NOTIFY, so no publisher waits for another, and a transaction that stays open holds back no one.
Each queued row has a provisional id from the events table's sequence. The sequencer polls the
queue (every 2 ms while events flow, 20 ms when quiet) and, in one transaction per batch, moves
the committed rows into the events table and rings the listeners' doorbell (one NOTIFY):

* a row whose provisional id is above every id delivered so far keeps it (the common case: the
  id ``publish()`` returned is the delivered id);
* a row that committed after a higher id was delivered (a transaction that stayed open, or one
  that lost a race by more than ``GRACE``) gets a new id, above everything delivered: ids only
  grow in delivery order, and a reader that keeps ``id > cursor`` never skips it;
* a hole below the visible rows (a transaction between its INSERT and its commit, or one that
  rolled back) is waited for at most ``GRACE``, then passed.

Only the sequencer writes the events table, one transaction at a time: exactly once (a row is
deleted from the queue in the transaction that delivers it), in one total order, replay equal
to live. The election is a session advisory lock on a connection of its own: when the leader's
process dies or its connection ends, PostgreSQL releases the lock and another worker takes over
within about ``ELECTION_INTERVAL``; nothing queued is lost meanwhile, only delayed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import gevent
import gevent.event
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import locks, metrics
from .store import EventStore, StoredEvent, compact_json

log = logging.getLogger("notifications.sequencer")

GRACE = 0.025  # seconds a hole below visible queued rows is waited for
POLL_BUSY = 0.002  # between two polls while events flow
POLL_IDLE = 0.02  # once the queue has been empty for IDLE_AFTER
PER_EVENT = 0.0002  # a longer pause after a larger batch: fewer, larger batches under load
POLL_LOADED = 0.005  # the longest pause while events flow
# The queue is a table of short-lived rows: the sequencer vacuums it itself after this many moved
# rows or this many seconds (autovacuum looks only once a minute), so that its polls, which read
# the queue from its lowest id, never walk a growing tail of dead rows.
VACUUM_EVERY = 2000
VACUUM_AFTER = 1.0
IDLE_AFTER = 1.0
ELECTION_INTERVAL = 0.5  # between two attempts to become the leader (jittered)
BATCH = 100_000  # queued rows moved per transaction at most: a publish_many of 100,000 arrives at once
STATEMENT_TIMEOUT = 5.0  # a database call that hangs longer drops the connection
SILENT_SESSION = 3.0  # PostgreSQL ends a sequencer session silent this long (it polls far more often)
HAND_OVER = 1000  # a batch this small goes straight to this worker's own streams (``on_moved``)


class Sequencer:
    """This worker's candidacy for sequencer, and the loop it runs while leading."""

    def __init__(
        self, store: EventStore, engine: Engine, on_moved: Callable[[int, list[StoredEvent]], None] | None = None
    ) -> None:
        self.store = store
        # Called with the events each step delivered (when a few) and the id they follow: this
        # worker's streams get them without waiting for the doorbell and a query.
        self.on_moved = on_moved
        self.engine = engine  # a dedicated connection: the lock is session state
        names = store.names
        self.key = locks.sequencer_key(names)
        self.leading = gevent.event.Event()
        self._nudged = gevent.event.Event()  # events were queued in this process: step now
        self._greenlet: gevent.Greenlet | None = None
        # One step of the leader, one round trip: a multi-statement query in autocommit, so one
        # implicit transaction: the publish lock (older workers take it during a rolling deploy);
        # the queued rows, each ready if late (at or below the highest id delivered: it gets a
        # new id), next (continuing that id without a hole), or every row (``all``: a hole
        # waited for long enough); the ready rows moved into the events table in id order; one
        # NOTIFY if any moved. It answers: the highest id delivered, how many moved, how many of
        # them were late, how many wait behind a hole.
        queue, events = names.sql("_queue"), names.sql()
        step = (
            f"WITH top AS (SELECT GREATEST($1, (SELECT coalesce(max(id), 0) FROM {events})) AS hw), "
            f"q AS (SELECT id FROM {queue} ORDER BY id LIMIT {BATCH}), "
            "ranked AS (SELECT q.id, q.id <= top.hw AS late, "
            "q.id - row_number() OVER (PARTITION BY q.id <= top.hw ORDER BY q.id) = top.hw AS next FROM q, top), "
            # The ready rows are exactly the queued ids up to one bound (the late ones are all at
            # or below the highest delivered id, the next ones run on from it without a hole),
            # so the DELETE is a range, never a join: a join planned while the queue was empty
            # (the sequencer vacuums it) takes quadratic time over a burst of 100,000.
            "upto AS (SELECT CASE WHEN $2 THEN max(id) ELSE coalesce(max(id) FILTER (WHERE late OR next), 0) END "
            "AS id FROM ranked), "
            f"moved AS (DELETE FROM {queue} WHERE id <= (SELECT id FROM upto) RETURNING *), "
            "numbered AS (SELECT m.*, "
            f"CASE WHEN m.id > top.hw THEN m.id ELSE nextval('{names.sequence}'::regclass) END AS new_id "
            "FROM moved m, top), "
            f"ins AS (INSERT INTO {events} (id, event, data, user_id, channel, created_at) "
            "SELECT new_id, event, data, user_id, channel, created_at FROM numbered ORDER BY new_id RETURNING id), "
            # Inbox notifications go into the inbox with their delivery id, each with the next
            # position (``seq``) of its target ('' for no user or no channel): see ``inbox_store``.
            "boxed AS (SELECT new_id AS id, coalesce(user_id, '') AS u, coalesce(channel, '') AS c, data, created_at, "
            "row_number() OVER (PARTITION BY coalesce(user_id, ''), coalesce(channel, '') ORDER BY new_id) AS k, "
            "count(*) OVER (PARTITION BY coalesce(user_id, ''), coalesce(channel, '')) AS n "
            "FROM numbered WHERE inbox), "
            f"tgt AS (INSERT INTO {names.sql('_inbox_targets')} AS t (user_id, channel, seq) "
            "SELECT u, c, max(n) FROM boxed GROUP BY u, c "
            "ON CONFLICT (user_id, channel) DO UPDATE SET seq = t.seq + EXCLUDED.seq RETURNING user_id, channel, seq), "
            f"box AS (INSERT INTO {names.sql('_inbox')} (event_id, user_id, channel, data, created_at, seq) "
            "SELECT b.id, b.u, b.c, b.data, b.created_at, t.seq - b.n + b.k "
            "FROM boxed b JOIN tgt t ON t.user_id = b.u AND t.channel = b.c), "
            "bell AS (SELECT pg_notify($3, max(id)::text) FROM ins HAVING count(*) > 0) "
            "SELECT (SELECT max(id) FROM ins), (SELECT count(*) FROM ins), (SELECT count(*) FROM ranked WHERE late), "
            "(SELECT count(*) FROM ranked) - (SELECT count(*) FROM ins), (SELECT count(*) FROM bell), "
            # and, for a batch of at most HAND_OVER, the events it delivered, after the id they follow
            "(SELECT hw FROM top), (SELECT json_agg(json_build_array(new_id, event, data, user_id, channel, "
            f"extract(epoch FROM created_at)) ORDER BY new_id) FROM numbered "
            f"WHERE (SELECT count(*) FROM numbered) <= {HAND_OVER})"
        )
        # Prepared once per connection: planning the step costs more than running it.
        self._prepare = (
            f"PREPARE notifications_step (bigint, boolean, text) AS {step}; "
            f"PREPARE notifications_poll AS SELECT EXISTS (SELECT 1 FROM {queue})"
        )
        self._step = (
            "SELECT pg_advisory_xact_lock(%(publish_key)s); EXECUTE notifications_step (%(hw)s, %(all)s, %(channel)s)"
        )
        self._vacuum = f"VACUUM (SKIP_LOCKED, TRUNCATE FALSE) {queue}"
        self._params = {"publish_key": locks.publish_key(names), "channel": store.channel}

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def deliver_now(self) -> int | None:
        """Deliver every committed queued event at once, in this thread, when no sequencer is
        running (a script, a test): how many, or None when a sequencer holds the lock."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.exec_driver_sql("SELECT pg_try_advisory_lock(%(k)s)", {"k": self.key}).scalar():
                return None
            try:
                params = {**self._params, "hw": self.store.newest_id(conn), "all": True}
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                cursor.execute(self._prepare)
                cursor.execute(self._step, params)
                row = cursor.fetchone()
                return int(row[1]) if row else 0
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": self.key})

    def _run(self) -> None:
        while True:
            try:
                with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    self._end_when_silent(conn)
                    self._campaign(conn)
            except gevent.GreenletExit:
                raise
            except (Exception, gevent.Timeout) as exc:  # reconnect, and stand again
                log.warning("sequencer connection lost (%s: %s)", type(exc).__name__, str(exc).strip()[:200])
            finally:
                if self.leading.is_set():
                    self.leading.clear()
                    metrics.SEQUENCER_LEADER.set(0)
            gevent.sleep(ELECTION_INTERVAL * random.uniform(0.5, 1.5))

    @staticmethod
    def _end_when_silent(conn: Connection) -> None:
        """Have PostgreSQL end this session when it stays silent (PostgreSQL 14 and later): a
        leader whose connection went half-open would otherwise keep the lock, and every other
        worker out, for as long as the database believes the connection alive."""
        try:
            conn.exec_driver_sql(f"SET idle_session_timeout = '{int(SILENT_SESSION * 1000)}ms'")
        except DBAPIError:
            pass  # an older PostgreSQL: TCP keepalives only

    def _campaign(self, conn: Connection) -> None:
        """Try to become the leader until this connection fails; lead while it holds the lock."""
        while True:
            with gevent.Timeout(STATEMENT_TIMEOUT):
                won = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%(k)s)", {"k": self.key}).scalar()
            if won:
                self.leading.set()
                metrics.SEQUENCER_LEADER.set(1)
                log.info("this worker is the sequencer")
                self._lead(conn)
            gevent.sleep(ELECTION_INTERVAL * random.uniform(0.5, 1.5))

    def nudge(self) -> None:
        """Events were queued by this process: if it leads, step now rather than at the next poll."""
        if self.leading.is_set():
            self._nudged.set()

    def _lead(self, conn: Connection) -> None:
        with gevent.Timeout(STATEMENT_TIMEOUT):
            delivered = self.store.newest_id(conn)  # the highest id delivered so far
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with gevent.Timeout(STATEMENT_TIMEOUT):
            cursor.execute(self._prepare)
        params = {**self._params, "hw": delivered, "all": False}
        hole_since: float | None = None
        active_at = time.monotonic()
        moved = swept = 0
        swept_at = active_at
        while True:
            wait = POLL_BUSY + moved * PER_EVENT if time.monotonic() - active_at < IDLE_AFTER else POLL_IDLE
            nudged = self._nudged.wait(min(wait, POLL_LOADED))
            self._nudged.clear()
            if not (nudged or moved or hole_since is not None):  # events known to be queued: no poll
                with gevent.Timeout(STATEMENT_TIMEOUT):
                    cursor.execute("EXECUTE notifications_poll")
                    (queued,) = cursor.fetchone() or (False,)
                if not queued:
                    continue
            now = time.monotonic()
            params["hw"], params["all"] = delivered, hole_since is not None and now - hole_since >= GRACE
            with gevent.Timeout(STATEMENT_TIMEOUT):
                cursor.execute(self._step, params)
                top, moved, late, waiting, _, after, rows = cursor.fetchone() or (None, 0, 0, 0, 0, 0, None)
            if moved:
                delivered = max(delivered, int(top or 0))
                if rows and self.on_moved is not None:
                    events = [
                        StoredEvent(int(i), name, compact_json(data), user, chan, float(at))
                        for i, name, data, user, chan, at in rows
                    ]
                    self.on_moved(int(after), events)
                metrics.EVENTS_SEQUENCED.inc(moved)
                if late:
                    metrics.EVENTS_RENUMBERED.inc(late)
            if waiting:  # behind a hole: a transaction about to commit, or one rolled back
                hole_since = now if hole_since is None or params["all"] else hole_since
            else:
                hole_since = None
            active_at = now
            if moved >= BATCH:
                self._nudged.set()  # more where these came from
            swept += moved
            if swept >= VACUUM_EVERY or swept and now - swept_at >= VACUUM_AFTER:
                with gevent.Timeout(STATEMENT_TIMEOUT):
                    cursor.execute(self._vacuum)
                swept, swept_at = 0, now
