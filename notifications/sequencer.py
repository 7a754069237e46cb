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

import gevent
import gevent.event
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import locks, metrics
from .store import EventStore

log = logging.getLogger("notifications.sequencer")

GRACE = 0.025  # seconds a hole below visible queued rows is waited for
POLL_BUSY = 0.002  # between two polls while events flow
POLL_IDLE = 0.02  # once the queue has been empty for IDLE_AFTER
IDLE_AFTER = 1.0
ELECTION_INTERVAL = 0.5  # between two attempts to become the leader (jittered)
BATCH = 100_000  # queued rows moved per transaction at most: a publish_many of 100,000 arrives at once
STATEMENT_TIMEOUT = 5.0  # a database call that hangs longer drops the connection
SILENT_SESSION = 3.0  # PostgreSQL ends a sequencer session silent this long (it polls far more often)


class Sequencer:
    """This worker's candidacy for sequencer, and the loop it runs while leading."""

    def __init__(self, store: EventStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine  # a dedicated connection: the lock is session state
        names = store.names
        self.key = locks.sequencer_key(names)
        self.leading = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._poll = f"SELECT id FROM {names.sql('_queue')} ORDER BY id LIMIT {BATCH}"
        # One implicit transaction (a multi-statement query in autocommit): the publish lock,
        # which older workers take during a rolling deploy, then the move and the doorbell.
        self._move = (
            "SELECT pg_advisory_xact_lock(%(publish_key)s); "
            f"WITH moved AS (DELETE FROM {names.sql('_queue')} WHERE id = ANY(%(ids)s) RETURNING *), "
            f"top AS (SELECT GREATEST(%(hw)s, (SELECT coalesce(max(id), 0) FROM {names.sql()})) AS hw), "
            f"ins AS (INSERT INTO {names.sql()} (id, event, data, user_id, channel, created_at) "
            f"SELECT CASE WHEN m.id > top.hw THEN m.id ELSE nextval('{names.sequence}'::regclass) END, "
            "m.event, m.data, m.user_id, m.channel, m.created_at FROM moved m, top ORDER BY m.id RETURNING id), "
            "bell AS (SELECT pg_notify(%(channel)s, (SELECT max(id) FROM ins)::text)) "
            "SELECT max(ins.id), count(*) FROM ins, bell"
        )
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
                queued = [row[0] for row in conn.exec_driver_sql(self._poll)]
                if not queued:
                    return 0
                params = {**self._params, "ids": queued, "hw": self.store.newest_id(conn)}
                return int(conn.exec_driver_sql(self._move, params).one()[1])
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

    def _lead(self, conn: Connection) -> None:
        with gevent.Timeout(STATEMENT_TIMEOUT):
            delivered = self.store.newest_id(conn)  # the highest id delivered so far
        hole_since: float | None = None
        active_at = time.monotonic()
        while True:
            with gevent.Timeout(STATEMENT_TIMEOUT):
                queued = [row[0] for row in conn.exec_driver_sql(self._poll)]
            now = time.monotonic()
            if not queued:
                hole_since = None
                gevent.sleep(POLL_BUSY if now - active_at < IDLE_AFTER else POLL_IDLE)
                continue
            active_at = now
            ready = ready_rows(queued, delivered)
            if not ready:  # a hole first: a transaction about to commit, or rolled back
                hole_since = now if hole_since is None else hole_since
                if now - hole_since < GRACE:
                    gevent.sleep(POLL_BUSY)
                    continue
                ready = queued
            hole_since = None
            late = sum(1 for i in ready if i <= delivered)
            with gevent.Timeout(STATEMENT_TIMEOUT):
                top, count = conn.exec_driver_sql(self._move, {**self._params, "ids": ready, "hw": delivered}).one()
            if count:
                delivered = max(delivered, int(top))
                metrics.EVENTS_SEQUENCED.inc(count)
                if late:
                    metrics.EVENTS_RENUMBERED.inc(late)


def ready_rows(queued: list[int], delivered: int) -> list[int]:
    """The queued ids (sorted) to deliver now: those at or below ``delivered`` (late: they get
    new ids, waiting helps nothing), and the run that continues ``delivered`` without a hole."""
    ready = [i for i in queued if i <= delivered]
    expected = delivered + 1
    for i in queued:
        if i <= delivered:
            continue
        if i != expected:
            break
        ready.append(i)
        expected += 1
    return ready
