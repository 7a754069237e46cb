"""Per-worker fan-out: one listener greenlet, a routing index and bounded subscriber queues.

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
import socket
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

log = logging.getLogger("notifications.fanout")

RECENT_EVENTS = 10_000


def chunked(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, framed exactly as gunicorn frames a yielded chunk."""
    return b"%X\r\n%b\r\n" % (len(data), data)


class Subscriber:
    """One open stream: who it is, what it reads, and how its bytes reach the client.

    Before the stream is live (while its connect message and replay are written) events wait
    in ``early``. Once live it is in one of two modes:

    * **detached** (plain HTTP/1.1 under gunicorn): the stream owns its socket and no greenlet.
      Events, heartbeats and the last frame are written straight to the socket with
      non-blocking sends, each event already framed as an HTTP chunk; what does not fit waits
      in ``queue`` for a libev write watcher, and a queue that reaches ``limit`` marks a slow
      consumer.
    * **attached** (TLS, another server, HEAD): the stream's greenlet yields frames to the
      server; they wait in ``queue`` and ``wakeup`` wakes it.

    A libev read watcher on the socket notices a client that hangs up, without a greenlet.
    """

    __slots__ = (
        "user_id",
        "channels",
        "limit",
        "early",
        "queue",
        "wakeup",
        "closed",
        "writer",
        "client",
        "detached",
        "watcher",
        "write_watcher",
        "live",
        "cursor",
        "sent",
        "on_close",
    )

    def __init__(self, user_id: str, channels: Iterable[str], limit: int, client: Any = None) -> None:
        self.user_id = user_id
        self.channels = frozenset(channels)
        self.limit = limit
        self.early: list[tuple[int, bytes]] = []  # events that arrived before the stream was live
        self.queue: list[bytes] = []  # attached: frames to yield; detached: bytes waiting for the socket
        self.wakeup: gevent.event.Event | None = gevent.event.Event()
        self.closed: str | None = None  # why the stream ended: "slow", "drain", "gone", "expired", ...
        self.writer: gevent.Greenlet | None = None  # attached: set while the greenlet is blocked writing
        self.client = client  # the client socket, when the server exposes it
        self.detached = False
        self.watcher: Any = None
        self.write_watcher: Any = None
        self.live = False  # set once connect and replay are written
        self.cursor = 0  # the id of the last event written to this stream
        self.sent = 0  # events written to this stream
        self.on_close: Callable[[], None] | None = None  # detached: called once the socket is closed

    def watch_disconnect(self) -> None:
        """Notice at once when the client hangs up, not at the next write: a libev watcher on
        the socket (no greenlet) that ends the stream when the socket reads end-of-file."""
        if self.client is None:
            return
        try:
            fd = self.client.fileno()
        except OSError:
            return
        watcher = gevent.get_hub().loop.io(fd, 1)
        watcher.start(self._readable)
        self.watcher = watcher

    def _readable(self) -> None:
        try:
            data = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end-of-file: the client is gone
            self.unwatch()
            self.close("gone")
        elif self.detached:
            self._discard_input()

    def _discard_input(self) -> None:
        """A detached stream reads nothing: drop what a client sends after its request."""
        try:
            while self.client.recv(65536, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass

    def unwatch(self) -> None:
        for watcher in (self.watcher, self.write_watcher):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.watcher = self.write_watcher = None

    def detach(self, client: Any) -> None:
        """Own the socket from now on (see the class docstring); the greenlet may end."""
        self.client = client
        self.detached = True
        self.wakeup = None
        self.live = True
        for frame in self.take_early():
            self._write(chunked(frame))

    def push(self, event_id: int, frame: bytes, chunk: bytes | None = None) -> None:
        """An event for this stream (``chunk``: the same frame as one HTTP chunk)."""
        if self.closed:
            return
        if not self.live:
            if len(self.early) >= self.limit:
                self.close("slow")
            else:
                self.early.append((event_id, frame))
            return
        if event_id <= self.cursor:
            return
        self.cursor = event_id
        self.sent += 1
        self.send(frame, chunk)

    def take_early(self) -> list[bytes]:
        """The frames that arrived before the stream was live and are newer than its cursor."""
        fresh = [(event_id, frame) for event_id, frame in self.early if event_id > self.cursor]
        self.early = []
        if fresh:
            self.cursor = fresh[-1][0]
            self.sent += len(fresh)
        return [frame for _, frame in fresh]

    def send(self, frame: bytes, chunk: bytes | None = None) -> None:
        """Write (detached) or queue (attached) one SSE frame."""
        if self.closed:
            return
        if self.detached:
            self._write(chunked(frame) if chunk is None else chunk)
            return
        if len(self.queue) >= self.limit:
            self.close("slow")
            return
        self.queue.append(frame)
        assert self.wakeup is not None
        self.wakeup.set()

    def take(self) -> list[bytes]:
        """Attached: the frames to yield now."""
        frames, self.queue = self.queue, []
        if self.wakeup is not None:
            self.wakeup.clear()
        return frames

    def _write(self, data: bytes) -> None:
        if self.queue:  # the socket is full: wait behind what is already waiting
            if len(self.queue) >= self.limit:
                self.close("slow")
            else:
                self.queue.append(data)
            return
        try:
            written = self.client.send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.close("gone")
            return
        if written < len(data):
            self.queue.append(data[written:])
            watcher = gevent.get_hub().loop.io(self.client.fileno(), 2)
            watcher.start(self._writable)
            self.write_watcher = watcher

    def _writable(self) -> None:
        data = b"".join(self.queue)  # coalesce the backlog into one write
        try:
            written = self.client.send(data)
        except BlockingIOError:
            return
        except OSError:
            self.close("gone")
            return
        self.queue = [data[written:]] if written < len(data) else []
        if not self.queue and self.write_watcher is not None:
            self.write_watcher.stop()
            self.write_watcher.close()
            self.write_watcher = None

    def close(self, reason: str, final: bytes | None = None) -> None:
        """End the stream; ``final`` is its last frame (a ``retry:`` or an ``error`` event),
        written when the client is keeping up."""
        if self.closed:
            return
        self.closed = reason
        if reason == "slow":
            metrics.SLOW_CONSUMERS.inc()
        if self.detached:
            self._close_socket(final)
            return
        self.queue = [final] if final is not None and reason not in ("slow", "gone") else []
        if self.wakeup is not None:
            self.wakeup.set()
        if reason == "slow" and self.writer is not None:
            # The client stopped reading and the write blocks: end that greenlet, and stop
            # reading the socket so the server closes the connection instead of keeping it.
            self.writer.kill(block=False)
            if self.client is not None:
                try:
                    self.client.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def _close_socket(self, final: bytes | None) -> None:
        self.unwatch()
        if final is not None and not self.queue and self.closed not in ("slow", "gone"):
            try:  # the last frame and the end of the chunked body, if they fit at once
                self.client.send(chunked(final) + b"0\r\n\r\n")
            except OSError:
                pass
        self.queue = []
        try:
            self.client.close()
        except OSError:
            pass
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()

    def sees(self, user_id: str | None, channel: str | None) -> bool:
        if user_id is not None and user_id != self.user_id:
            return False
        return channel is None or channel in self.channels


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
        sub.unwatch()
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
                sub.push(event.id, frame, chunk)
                delivered += 1
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
    ) -> None:
        self.hub = hub
        self.on_tick = on_tick  # called after every wake-up, on the listener's connection
        self.store = store
        self.engine = listen_engine
        self.probe_interval = probe_interval
        self.connected = gevent.event.Event()
        self.started = gevent.event.Event()  # set once the hub has its first cursor
        self.reconnects = 0
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
                self.reconnects += 1
                metrics.LISTENER_RECONNECTS.inc()
                log.warning("listener connection lost (%s); reconnecting", _short(exc))
            delay = backoff * random.uniform(0.5, 1.5)
            backoff = min(backoff * 2, 5.0)
            gevent.sleep(delay)

    def _serve(self, conn: Connection) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        conn.exec_driver_sql(f'LISTEN "{self.store.channel}"')
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
            # One query per wake-up; when quiet it is the probe that proves the link alive.
            with gevent.Timeout(max(self.probe_interval, 1.0) * 2):
                self._catch_up(conn)
                if self.on_tick is not None:
                    self.on_tick(conn)

    def _catch_up(self, conn: Connection) -> None:
        assert self.hub.cursor is not None
        while True:
            events = self.store.read_since(conn, self.hub.cursor)
            self.hub.dispatch(events)
            if len(events) < BATCH:
                return
            self._take_notifies(conn.connection.dbapi_connection)  # a burst: keep the head current

    def _take_notifies(self, raw: Any) -> None:
        """Read the doorbells that arrived; each names the newest id its transaction committed."""
        raw.poll()
        for note in raw.notifies:
            if note.payload.isdigit():
                self.hub.announce(int(note.payload))
        raw.notifies.clear()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
