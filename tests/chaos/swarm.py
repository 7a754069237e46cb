"""Many auto-reconnecting EventSource-like clients on one selector thread.

Each :class:`VClient` behaves like a browser's ``EventSource``: it keeps the last ``id:`` it saw
(the connect message and heartbeats included, as the spec's last-event-ID buffer does), and when
its response ends or its connection fails it waits the last ``retry:`` it was sent (capped) and
reconnects with ``Last-Event-ID``. Everything runs on non-blocking sockets in one background
thread, so thousands of streams cost a few file descriptors, not thousands of threads.

Every published event a client receives is recorded (``received``: ids in arrival order), as is
everything else the chaos tests assert on: error and reset events, heartbeats, and how each
connection ended (cleanly after a ``retry:``, or by EOF / reset).
"""

from __future__ import annotations

import errno
import heapq
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from tests.support.sse_client import STREAM_PATH, Message, SSEParser, is_connect_message

# Event types that are not published events (their ids are the stream's cursor, not an event).
NOT_PUBLISHED = frozenset({"heartbeat", "reset", "error", "token-expiring"})


class _Dechunker:
    """Incremental HTTP/1.1 chunked decoding; ``done`` once the terminating chunk arrived."""

    def __init__(self) -> None:
        self.buf = b""
        self.remaining: int | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while not self.done:
            if self.remaining is None:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(self.buf[:eol].split(b";", 1)[0].strip(), 16)
                self.buf = self.buf[eol + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.remaining = size
            elif self.remaining > 0:
                if not self.buf:
                    break
                take = min(len(self.buf), self.remaining)
                out += self.buf[:take]
                self.buf = self.buf[take:]
                self.remaining -= take
            else:
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.remaining = None
        return bytes(out)


@dataclass
class End:
    """How one connection of a client ended."""

    kind: str  # "clean" (response complete), "eof", "reset", "connect-failed", "http-<status>"
    at: float
    messages: int  # blocks received on this connection
    last_was_retry: bool  # the last block before the end was a lone ``retry:``
    error_events: int  # ``error`` events on this connection


@dataclass
class _Conn:
    sock: socket.socket
    request: bytes
    state: str = "connecting"  # connecting → head → body
    head: bytes = b""
    status: int | None = None
    chunked: bool = False
    dechunker: _Dechunker | None = None
    parser: SSEParser = field(default_factory=SSEParser)
    messages: int = 0
    last_was_retry: bool = False
    error_events: int = 0
    registered: bool = False


@dataclass
class VClient:
    """One browser tab: a user, its channels, and what it received."""

    index: int
    user: str
    token: str
    channels: tuple[str, ...] = ()
    start_id: int | None = None  # the Last-Event-ID of its first connection
    rcvbuf: int | None = None  # SO_RCVBUF before connect (slow-consumer tests)
    last_id: str | None = None
    retry_ms: int = 300
    received: list[int] = field(default_factory=list)
    newest: int = 0
    connections: int = 0
    connected: int = 0  # connect messages seen
    open: bool = False  # a response is being read (connect message seen)
    ends: list[End] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    heartbeats: list[float] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    local: tuple[str, int] | None = None  # this connection's local address
    paused: bool = False
    active: bool = True  # reconnect after an end
    conn: _Conn | None = None

    def __post_init__(self) -> None:
        if self.start_id is not None and self.last_id is None:
            self.last_id = str(self.start_id)


class Swarm:
    """Run many :class:`VClient` on one selector thread against ``host:port``."""

    def __init__(self, host: str, port: int, retry_cap_ms: int = 1000, path: str = STREAM_PATH) -> None:
        self.addr = (host, port)
        self.path = path
        self.retry_cap_ms = retry_cap_ms
        self.clients: list[VClient] = []
        self.lock = threading.RLock()
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, client index)
        self._seq = 0
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="chaos-swarm", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control (any thread)

    def add(self, clients: Iterable[VClient], connect: bool = True) -> list[VClient]:
        added = list(clients)
        with self.lock:
            for c in added:
                c.index = len(self.clients)
                self.clients.append(c)
                if connect:
                    self._schedule(c, 0.0)
        self._wake()
        return added

    def pause(self, client: VClient) -> None:
        """Stop reading this client's socket (a tab that froze); the server sees a slow consumer."""
        with self.lock:
            client.paused = True
            if client.conn is not None and client.conn.registered and client.conn.state != "connecting":
                self._sel.unregister(client.conn.sock)
                client.conn.registered = False
        self._wake()

    def resume(self, client: VClient) -> None:
        with self.lock:
            client.paused = False
            conn = client.conn
            if conn is not None and not conn.registered:
                self._sel.register(conn.sock, selectors.EVENT_READ, client)
                conn.registered = True
        self._wake()

    def close(self) -> None:
        with self.lock:
            self._stop = True
        self._wake()
        self._thread.join(10)
        with self.lock:
            for c in self.clients:
                c.active = False
                if c.conn is not None:
                    self._drop(c)
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ waiting (main thread)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``predicate`` (under the lock) until true; fail with ``what`` at the deadline.

        Returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            with self.lock:
                if predicate():
                    return time.monotonic() - start
            if time.monotonic() > deadline:
                with self.lock:
                    detail = self.describe()
                raise AssertionError(f"not within {timeout}s: {what}\n{detail}")
            time.sleep(0.05)  # polling interval of a condition with a deadline

    def wait_open(self, clients: Iterable[VClient] | None = None, timeout: float = 30.0) -> float:
        group = list(self.clients if clients is None else clients)
        return self.wait(lambda: all(c.open for c in group), timeout, f"{len(group)} streams open")

    def wait_received(self, event_id: int, clients: Iterable[VClient] | None = None, timeout: float = 30.0) -> float:
        """Every client received an event with id >= ``event_id`` (publish a broadcast sentinel)."""
        group = list(self.clients if clients is None else clients)
        return self.wait(
            lambda: all(c.newest >= event_id for c in group), timeout, f"all {len(group)} clients reach id {event_id}"
        )

    def describe(self, limit: int = 8) -> str:
        lines = []
        for c in self.clients[:limit]:
            lines.append(
                f"  client {c.index} user={c.user} open={c.open} conns={c.connections} newest={c.newest} "
                f"received={len(c.received)} last_id={c.last_id} "
                f"ends={[e.kind for e in c.ends[:3]]}..{[e.kind for e in c.ends[-3:]]} "
                f"errors={c.errors[-2:]} resets={c.resets[-2:]}"
            )
        if len(self.clients) > limit:
            behind = sorted(self.clients, key=lambda c: c.newest)[:limit]
            lines.append("  furthest behind: " + ", ".join(f"{c.index}@{c.newest}/{c.connections}c" for c in behind))
        return "\n".join(lines)

    # ------------------------------------------------------------------ the loop (swarm thread)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _schedule(self, client: VClient, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, client.index))

    def _loop(self) -> None:
        while True:
            with self.lock:
                if self._stop:
                    return
                timeout = 0.05
                if self._timers:
                    timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            ready = self._sel.select(timeout)
            with self.lock:
                if self._stop:
                    return
                for key, mask in ready:
                    client = key.data
                    if client is None:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                        continue
                    if client.conn is None or client.conn.sock is not key.fileobj:
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._on_writable(client)
                    elif mask & selectors.EVENT_READ:
                        self._on_readable(client)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, index = heapq.heappop(self._timers)
                    client = self.clients[index]
                    if client.active and client.conn is None:
                        self._connect(client)

    def _connect(self, client: VClient) -> None:
        params = [("token", client.token)]
        if client.channels:
            params.append(("channels", ",".join(client.channels)))
        lines = [
            f"GET {self.path}?{urlencode(params)} HTTP/1.1",
            f"Host: {self.addr[0]}:{self.addr[1]}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if client.last_id is not None:
            lines.append(f"Last-Event-ID: {client.last_id}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if client.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client.rcvbuf)
        client.connections += 1
        conn = _Conn(sock, request)
        client.conn = conn
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            self._end(client, f"connect-failed:{errno.errorcode.get(err, err)}")
            return
        client.local = sock.getsockname()[:2]
        self._sel.register(sock, selectors.EVENT_WRITE, client)
        conn.registered = True

    def _on_writable(self, client: VClient) -> None:
        conn = client.conn
        assert conn is not None
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._end(client, f"connect-failed:{errno.errorcode.get(err, err)}")
            return
        try:
            sent = conn.sock.send(conn.request)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(client, f"connect-failed:{errno.errorcode.get(exc.errno or 0, exc.errno)}")
            return
        conn.request = conn.request[sent:]
        if conn.request:
            return
        conn.state = "head"
        if client.paused:
            self._sel.unregister(conn.sock)
            conn.registered = False
        else:
            self._sel.modify(conn.sock, selectors.EVENT_READ, client)

    def _on_readable(self, client: VClient) -> None:
        conn = client.conn
        assert conn is not None
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._end(client, "reset")
            return
        if not data:
            self._end(client, "clean" if conn.state == "body" and not conn.chunked and conn.status else "eof")
            return
        if conn.state == "head":
            conn.head += data
            end = conn.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = conn.head[:end].decode("latin-1"), conn.head[end + 4 :]
            status_line, *header_lines = head.split("\r\n")
            conn.status = int(status_line.split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            conn.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            conn.dechunker = _Dechunker() if conn.chunked else None
            conn.state = "body"
            if conn.status != 200:
                self._end(client, f"http-{conn.status}")
                return
        body = conn.dechunker.feed(data) if conn.dechunker is not None else data
        if body:
            for msg in conn.parser.feed(body):
                self._on_message(client, conn, msg)
        if conn.dechunker is not None and conn.dechunker.done:
            self._end(client, "clean")

    def _on_message(self, client: VClient, conn: _Conn, msg: Message) -> None:
        conn.messages += 1
        if msg.retry is not None:
            client.retry_ms = msg.retry
        conn.last_was_retry = msg.retry is not None and not msg.is_event and msg.id is None
        if msg.id is not None:
            client.last_id = msg.id  # EventSource's last event ID persists across reconnects
        if not msg.is_event:
            return
        kind = msg.type
        if kind == "heartbeat":
            client.heartbeats.append(msg.at)
        elif kind == "error":
            conn.error_events += 1
            client.errors.append(msg.data or "")
        elif kind == "reset":
            client.resets.append(msg.data or "")
        elif kind in NOT_PUBLISHED:
            pass
        elif kind == "notification" and is_connect_message(msg):
            client.connected += 1
            client.open = True
        elif msg.id is None or not msg.id.isdigit():
            client.anomalies.append(f"published event without a numeric id: {msg.raw!r}")
        else:
            event_id = int(msg.id)
            client.received.append(event_id)
            if event_id > client.newest:
                client.newest = event_id

    def _end(self, client: VClient, kind: str) -> None:
        conn = client.conn
        assert conn is not None
        client.ends.append(End(kind, time.monotonic(), conn.messages, conn.last_was_retry, conn.error_events))
        self._drop(client)
        if client.active and not self._stop:
            self._schedule(client, min(client.retry_ms, self.retry_cap_ms) / 1000.0)

    def _drop(self, client: VClient) -> None:
        conn = client.conn
        if conn is None:
            return
        if conn.registered:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.registered = False
        try:
            conn.sock.close()
        except OSError:
            pass
        client.conn = None
        client.open = False
