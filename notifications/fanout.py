"""Per-worker fan-out: one listener greenlet and the routing index (no sockets: a stream's bytes
are ``transport.Subscriber``'s).

The listener owns one LISTEN connection (never a pool connection). Each NOTIFY is only a
doorbell: on every wake-up it runs one query for everything after the worker's cursor,
encodes each event to SSE bytes once and hands the bytes to the streams that may see it.
When the connection has been quiet for ``probe_interval`` the same query doubles as a probe;
any error (or a probe that hangs) drops the connection, and the listener reconnects with
jittered backoff and catches up from its cursor, so nothing is lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
from gevent import select as gselect
from sqlalchemy import Connection, Engine

from . import metrics
from .sse import encode
from .store import BATCH, EventStore, StoredEvent
from .transport import Subscriber, chunked

log = logging.getLogger("notifications.fanout")

RECENT_EVENTS = 10_000


class Hub:
    """The routing index of one worker: broadcast, by user and by channel."""

    def __init__(self) -> None:
        self.cursor: int | None = None  # the newest id dispatched; None until the listener starts
        self.head = 0  # the newest id the database has announced (NOTIFY); ahead of cursor while catching up
        self.waiting: dict[Subscriber, int] = {}  # subscribed ahead of the cursor, by start id (in order)
        self.everyone: set[Subscriber] = set()
        self.by_user: dict[str, set[Subscriber]] = {}
        self.by_channel: dict[str, set[Subscriber]] = {}
        self.recent: deque[tuple[StoredEvent, bytes]] = deque(maxlen=RECENT_EVENTS)
        self.recent_floor = 0  # every event after this id is in ``recent`` (or was evicted)
        self.draining = False
        self.farewell: Callable[[], bytes | None] = lambda: None  # the last frame of a drained stream

    def subscribe(self, sub: Subscriber) -> int:
        """Route every event after the newest one committed so far to ``sub``; return that id.

        While the worker is still catching up (a burst of events), a new stream starts at the
        newest id the database has announced, not at the worker's cursor: the events in between
        were committed before it connected. It waits outside the routing index until the cursor
        gets there, so the backlog is not walked once more for each new stream."""
        assert self.cursor is not None
        start = sub.cursor = max(self.cursor, self.head)
        if start > self.cursor:
            self.waiting[sub] = start
        else:
            self._route(sub)
        if self.draining:
            sub.close("drain", self.farewell())
        return start

    def _route(self, sub: Subscriber) -> None:
        self.everyone.add(sub)
        self.by_user.setdefault(sub.user_id, set()).add(sub)
        for channel in sub.channels:
            self.by_channel.setdefault(channel, set()).add(sub)

    def announce(self, newest: int) -> None:
        """The database has committed events up to ``newest`` (a NOTIFY payload)."""
        self.head = max(self.head, newest)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.waiting.pop(sub, None)
        self.everyone.discard(sub)
        _discard(self.by_user, sub.user_id, sub)
        for channel in sub.channels:
            _discard(self.by_channel, channel, sub)

    def start(self, cursor: int) -> None:
        if self.cursor is None:
            self.cursor = self.head = cursor
            self.recent_floor = cursor

    def dispatch(self, events: Iterable[StoredEvent]) -> None:
        """Encode each event once and queue it on every stream that may see it."""
        delivered = 0
        now = time.time()
        for event in events:
            if self.cursor is not None and event.id <= self.cursor:
                continue  # dispatched already (the sequencer's hand-over raced the listener's query)
            while self.waiting:  # streams that start before this event join the routing index
                sub, start = next(iter(self.waiting.items()))
                if start >= event.id:
                    break
                del self.waiting[sub]
                self._route(sub)
            frame = encode(id=event.id, event=event.name, data=event.data)
            chunk = chunked(frame)
            if event.channel is None:
                targets: Iterable[Subscriber] = (
                    self.everyone if event.user_id is None else self.by_user.get(event.user_id, ())
                )
            elif event.user_id is None:
                targets = self.by_channel.get(event.channel, ())
            else:
                targets = [s for s in self.by_user.get(event.user_id, ()) if event.channel in s.channels]
            for sub in list(targets):
                delivered += sub.push(event.id, frame, chunk)
            if event.created_at:
                metrics.DELIVERY_LATENCY.observe(max(0.0, now - event.created_at))
            if len(self.recent) == self.recent.maxlen:
                self.recent_floor = self.recent[0][0].id
            self.recent.append((event, frame))
            self.cursor = event.id
        if delivered:
            metrics.EVENTS_DELIVERED.inc(delivered)

    def replay_from_memory(self, after: int, sub: Subscriber) -> list[tuple[int, bytes]] | None:
        """The frames after ``after`` that ``sub`` may see, if memory holds all of them."""
        if after < self.recent_floor:
            return None
        missed = []
        for event, frame in reversed(self.recent):  # newest first: stop at the first one seen
            if event.id <= after:
                break
            if sub.sees(event.user_id, event.channel):
                missed.append((event.id, frame))
        missed.reverse()
        return missed

    def end_streams(self, subject: str, reason: str, final: bytes) -> int:
        """End every stream ``subject`` opened, with ``final`` as its last frame; return how many."""
        ended = [sub for sub in [*self.everyone, *self.waiting] if sub.subject == subject and not sub.closed]
        for sub in ended:
            sub.close(reason, final)
        return len(ended)

    def drain(self) -> None:
        """End every stream promptly (deploy, reload, shutdown)."""
        self.draining = True
        for sub in [*self.everyone, *self.waiting]:
            sub.close("drain", self.farewell())

    @property
    def open_streams(self) -> int:
        return len(self.everyone) + len(self.waiting)


def _discard(index: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]


class Listener:
    """The greenlet that owns this worker's LISTEN connection and feeds the hub."""

    def __init__(
        self,
        hub: Hub,
        store: EventStore,
        listen_engine: Engine,
        probe_interval: float,
        on_tick: Callable[[Connection], None] | None = None,
        control: tuple[str, Callable[[Connection], None], Callable[[str], None]] | None = None,
    ) -> None:
        self.hub = hub
        # The control channel: (its name, called after each LISTEN, called with each payload).
        self.control = control
        self.on_tick = on_tick  # called after every wake-up, on the listener's connection
        self.store = store
        self.engine = listen_engine
        self.probe_interval = probe_interval
        self.connected = gevent.event.Event()
        self.started = gevent.event.Event()  # set once the hub has its first cursor
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    backoff = 0.1
                    self._serve(conn)
            except gevent.GreenletExit:
                raise
            except (Exception, gevent.Timeout) as exc:  # any failure: reconnect and catch up from the cursor
                self.connected.clear()
                metrics.LISTENER_RECONNECTS.inc()
                log.warning("listener connection lost (%s); reconnecting", _short(exc))
            delay = backoff * random.uniform(0.5, 1.5)
            backoff = min(backoff * 2, 1.0)  # back within a second or two of the database
            gevent.sleep(delay)

    def _serve(self, conn: Connection) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        conn.exec_driver_sql(f'LISTEN "{self.store.channel}"')
        if self.control is not None:
            channel, listening, _ = self.control
            conn.exec_driver_sql(f'LISTEN "{channel}"')
            listening(conn)  # after the LISTEN: nothing said meanwhile is missed
        if self.hub.cursor is None:
            self.hub.start(self.store.newest_id(conn))
        self.started.set()
        self.connected.set()
        self._catch_up(conn)
        if self.on_tick is not None:
            self.on_tick(conn)
        while True:
            readable, _, _ = gselect.select([raw], [], [], self.probe_interval)
            if readable:
                self._take_notifies(raw)
            # One query per wake-up, unless the events announced were dispatched already (this
            # worker's sequencer handed them over); when quiet it is the probe that proves the
            # link alive.
            assert self.hub.cursor is not None
            if not readable or self.hub.cursor < self.hub.head:
                self._catch_up(conn)
            if self.on_tick is not None:
                with gevent.Timeout(self.query_timeout):
                    self.on_tick(conn)

    def moved_here(self, after: int, events: list[StoredEvent]) -> None:
        """This worker's sequencer delivered ``events``, the ones after ``after``: dispatch them
        now if the hub is at ``after`` (else the next query reads them)."""
        if events and self.started.is_set() and self.hub.cursor == after:
            self.hub.announce(events[-1].id)
            self.hub.dispatch(events)

    @property
    def query_timeout(self) -> float:
        """How long one query may take before the connection counts as dead (a hung probe)."""
        return max(self.probe_interval, 1.0) * 2

    def _catch_up(self, conn: Connection) -> None:
        """Dispatch everything after the cursor, one query at a time (each under the timeout,
        so a long backlog is no hung connection)."""
        assert self.hub.cursor is not None
        while True:
            with gevent.Timeout(self.query_timeout):
                events = self.store.read_since(conn, self.hub.cursor)
            self.hub.dispatch(events)
            if len(events) < BATCH:
                return
            self._take_notifies(conn.connection.dbapi_connection)  # a burst: keep the head current

    def _take_notifies(self, raw: Any) -> None:
        """Read the doorbells that arrived (each names the newest id its transaction committed)
        and the control messages."""
        raw.poll()
        for note in raw.notifies:
            if self.control is not None and note.channel == self.control[0]:
                self.control[2](note.payload)
            elif note.payload.isdigit():
                self.hub.announce(int(note.payload))
        raw.notifies.clear()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
