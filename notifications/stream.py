"""One open stream, from its first byte to its last, independent of Flask.

A stream is served in one of two ways (see ``transport.Subscriber``):

* **Detached** (a plain HTTP/1.1 GET under a gunicorn gevent worker): the request's greenlet
  writes ``retry:``, the connect message and the replay through the server, then takes the
  socket over and ends. From then on the stream is a ``Subscriber`` in the hub, a libev read
  watcher (hang-ups) and one libev timer (heartbeats, token expiry, maximum lifetime): no
  greenlet, no request objects, a few kilobytes per idle stream. The greenlet ends by raising
  ``StopIteration``, which gunicorn's async workers take as "the connection is handled".
* **Attached** (TLS, HTTP/1.0, HEAD, any other server): a generator that yields the same bytes.

Deliberate choices, do not "fix" them:
* ``retry:`` is written before anything touches the database: EventSource fires ``open`` on
  the first body bytes.
* The stream subscribes to live events *before* it reads the replay, and drops duplicates by id.
"""

from __future__ import annotations

import _socket
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import gevent
import gevent.socket

from . import metrics
from .auth import Identity
from .clock import http_date
from .control import REVOKED_REASON, disconnect_frame
from .events import serialize
from .sse import encode, jittered
from .state import State
from .transport import Subscriber, chunked

log = logging.getLogger("notifications.stream")

CONNECT_MESSAGE = {
    "type": "notification",
    "notificationType": "info",
    "message": "Connected to notification stream",
    "duration": 5000,
}
_CONNECT_DATA = serialize(CONNECT_MESSAGE)

StartResponse = Callable[..., Callable[[bytes], Any]]


def parse_last_event_id(raw: str) -> int | None:
    """A last event id is a non-negative decimal integer; anything else is None."""
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


def server_socket(environ: dict[str, Any]) -> Any:
    """The client socket gunicorn exposes, if any."""
    return environ.get("gunicorn.socket") or environ.get("gunicorn.sock")


def detachable(environ: dict[str, Any]) -> bool:
    """Whether the stream may take its socket over: a plain-text HTTP/1.1 GET on a gevent
    socket (gunicorn sends such a response chunked). Never under TLS or another server."""
    client = server_socket(environ)
    return (
        isinstance(client, gevent.socket.socket)
        and not hasattr(client, "cipher")
        and environ.get("REQUEST_METHOD") == "GET"
        and environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
    )


class StreamSession:
    """One open stream: connect, replay what was missed, then live events and heartbeats."""

    __slots__ = (
        "identity",
        "state",
        "sub",
        "expires_at",
        "warn_at",
        "last_id",
        "ends_at",
        "next_beat",
        "timer",
        "reason",
        "lease",
        "opened",
        "live_from",
    )

    def __init__(
        self,
        state: State,
        sub: Subscriber,
        identity: Identity,
        last_id: str | None,
        lease: int | None = None,
    ) -> None:
        settings = state.settings
        self.state = state
        self.lease = lease  # its slot in the per-user limit, released when it ends
        self.reason = "client"  # why the stream ended, for metrics, unless the subscriber says
        self.sub = sub
        self.identity = identity
        self.expires_at = identity.expires_at
        self.warn_at = None if identity.expires_at is None else identity.expires_at - settings.expiry_warning
        self.last_id = last_id
        lifetime = settings.max_stream_lifetime
        # Jittered, so streams opened together (after a deploy) do not all end together.
        self.ends_at = time.monotonic() + lifetime * random.uniform(0.8, 1.0) if lifetime else None
        self.next_beat = 0.0
        self.timer: Any = None
        self.opened: float | None = None
        self.live_from = 0  # the id after which the subscription delivers every event

    # -- serving ----------------------------------------------------------------------------

    def serve(self, environ: dict[str, Any], start_response: StartResponse, headers: list[tuple[str, str]]) -> Any:
        """Serve the stream as a WSGI app would: detached when it can, else as a generator."""
        if not detachable(environ):
            start_response("200 OK", headers)
            return self.run()
        write = start_response("200 OK", headers)
        response: Any = getattr(start_response, "__self__", None)  # gunicorn's response
        self._begin()
        try:
            for block in self._opening():
                if getattr(response, "chunked", False) and not response.headers_sent:
                    _send_with_head(response, block)
                else:
                    write(block)
            while self.sub.early:  # events that arrived meanwhile, until none is waiting
                fresh = self.sub.take_early()
                if fresh:
                    write(b"".join(fresh))
        except OSError:
            self.reason = "gone"
            self._end()
            raise
        except Exception:
            self._failed()
            return self._finish_through_server(write)
        except BaseException:
            self._end()
            raise
        if self.sub.closed:  # drained or too slow while connecting: end it the ordinary way
            self._end_keepalive(server_socket(environ))
            return self._finish_through_server(write)
        owned = _socket.socket(fileno=server_socket(environ).detach())
        owned.setblocking(False)
        self.sub.on_close = self._end
        self.sub.detach(owned)
        self._arm()
        self._log_access(environ, start_response)
        raise StopIteration("stream detached from its greenlet")

    def _finish_through_server(self, write: Callable[[bytes], Any]) -> list[bytes]:
        """Write what is queued (the last frame) and end; gunicorn then ends the chunked body."""
        frames = self.sub.take()
        try:
            if frames:
                write(b"".join(frames))
        finally:
            self._end()
        return []

    def run(self) -> Iterator[bytes]:
        """The attached stream: every byte is yielded to the server."""
        sub = self.sub
        self._begin()
        try:
            yield from self._opening()
            while sub.early:
                fresh = sub.take_early()
                if fresh:
                    yield b"".join(fresh)
            sub.live = True
            self._arm()
            while True:
                frames = sub.take()
                if frames:
                    sub.writer = gevent.getcurrent()
                    yield b"".join(frames)
                    sub.writer = None
                elif sub.closed:
                    break
                else:
                    assert sub.wakeup is not None
                    sub.wakeup.wait()
            if sub.closed in ("drain", "lifetime"):
                self._end_keepalive(sub.client)
        except GeneratorExit:
            raise
        except gevent.GreenletExit:
            raise
        except Exception:
            self._failed()
            yield b"".join(sub.take())
        finally:
            self._end()

    def _opening(self) -> Iterator[bytes]:
        """``retry:``, the reset, the connect message and the replay: in one piece when nothing
        is read from the database, else ``retry:`` first, so the browser's ``open`` never waits
        for a query."""
        retry = encode(retry=jittered(self.state.settings.retry_ms))
        if self.last_id is None:
            yield retry + self._connect()
            return
        yield retry
        head = self._connect()
        if head:
            yield head

    def _failed(self) -> None:
        log.exception("stream failed")
        self.reason = "error"
        metrics.REFUSALS.labels("500").inc()
        self.sub.queue = [encode(event="error", data=serialize({"error": "internal error", "code": 500}))]

    # -- start and end ----------------------------------------------------------------------

    def _begin(self) -> None:
        self.live_from = self.state.hub.subscribe(self.sub)  # every later event comes through it
        if self.state.revocations.revoked(self.identity, cached_only=True):  # revoked while admitted
            self.sub.close("revoked", disconnect_frame(REVOKED_REASON))
        self.sub.watch_disconnect()
        metrics.STREAMS_OPENED.inc()
        metrics.OPEN_STREAMS.inc()
        self.opened = time.monotonic()
        self.next_beat = self.opened + self.state.settings.heartbeat_interval
        self._log(logging.INFO, "stream opened")

    def _end(self) -> None:
        """Once, however the stream ends: unsubscribe, release its slot, count and log it."""
        if self.opened is None:
            return
        opened, self.opened = self.opened, None
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.sub.unwatch()
        self.state.hub.unsubscribe(self.sub)
        self.release()
        reason = self.sub.closed or self.reason
        metrics.OPEN_STREAMS.dec()
        metrics.STREAMS_CLOSED.labels(reason).inc()
        duration = time.monotonic() - opened
        metrics.STREAM_DURATION.observe(duration)
        self._log(logging.INFO, "stream closed", duration=round(duration, 3), events=self.sub.sent, reason=reason)

    def release(self) -> None:
        """Give the stream's slot back (once; also for a stream that never ran, like a HEAD)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.state.limits.release(lease)

    def _log(self, level: int, message: str, **details: Any) -> None:
        """One line naming the user and channels; a record of its own (no caller lookup: two
        lines per stream, at every connect)."""
        if not log.isEnabledFor(level):
            return
        fields = {"user": self.sub.user_id, "channels": sorted(self.sub.channels), **details}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        record = log.makeRecord(
            log.name, level, "(stream)", 0, "%s %s", (message, text), None, extra={"stream": fields}
        )
        log.handle(record)

    def _log_access(self, environ: dict[str, Any], start_response: StartResponse) -> None:
        """gunicorn logs a request when its greenlet finishes it; a detached stream's greenlet
        finishes early, so its access line is written here, once the stream is live."""
        server_log = self.state.server_log
        response = getattr(start_response, "__self__", None)
        request = getattr(response, "req", None)
        if server_log is None or request is None or self.opened is None:
            return
        try:
            server_log.access(response, request, environ, timedelta(seconds=time.monotonic() - self.opened))
        except Exception:
            log.exception("could not write the access log line")

    @staticmethod
    def _end_keepalive(client: Any) -> None:
        """After the last chunk, stop reading the connection so the server closes it at once
        instead of holding it open for another request while the worker shuts down."""
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    # -- connect and replay -----------------------------------------------------------------

    def _connect(self) -> bytes:
        """The reset (if any), the connect message and the replay of what was missed."""
        hub, store, settings = self.state.hub, self.state.store, self.state.settings
        assert hub.cursor is not None
        live_from = self.live_from
        replay_after: int | None = None
        head: list[bytes] = []
        if self.last_id is not None:
            requested = parse_last_event_id(self.last_id)
            if requested is not None and requested > live_from:
                # Another worker may be ahead of ours: trust the id if the table knows it (or the
                # queue: publish() returned it, the sequencer has yet to deliver it).
                with self.state.replay_gate:
                    newest = store.newest_id(queued=True)
                if requested > newest:
                    requested = None
                else:
                    self.sub.cursor = requested
            if requested is None:
                head.append(_reset("unknown-id", live_from))
            elif requested < live_from:
                replay_after = requested
        frames = None
        if replay_after is not None:
            with self.state.replay_gate:
                # Pruning may run in any process: ask the table, even when memory holds the rest.
                with store.engine.connect() as conn:
                    pruned = store.pruned_through(conn)
                if replay_after < pruned:
                    head.append(_reset("history-expired", pruned))
                    replay_after = pruned
                # Memory holds what the worker has dispatched: not enough while it catches up.
                frames = hub.replay_from_memory(replay_after, self.sub) if hub.cursor >= live_from else None
                if frames is None:
                    frames = [
                        (e.id, encode(id=e.id, event=e.name, data=e.data))
                        for e in store.replay(replay_after, live_from, self.sub.user_id, tuple(self.sub.channels))
                    ]
        if settings.connect_message:
            at = self.sub.cursor if replay_after is None else replay_after
            head.append(encode(id=at, event="notification", data=_CONNECT_DATA))
        if frames:
            metrics.EVENTS_REPLAYED.inc(len(frames))
            self.sub.sent += len(frames)
            head.extend(frame for _, frame in frames)
            self.sub.cursor = max(self.sub.cursor, frames[-1][0])
        if replay_after is not None:
            self.sub.cursor = max(self.sub.cursor, live_from)
        return b"".join(head)

    # -- live: one timer for heartbeats, the expiry warning, expiry and the lifetime -----------

    def _arm(self) -> None:
        now, wall = time.monotonic(), time.time()
        delay = self.next_beat - now
        if self.ends_at is not None:
            delay = min(delay, self.ends_at - now)
        if self.warn_at is not None:
            delay = min(delay, self.warn_at - wall)
        if self.expires_at is not None:
            delay = min(delay, self.expires_at - wall)
        timer = gevent.get_hub().loop.timer(max(0.0, delay))
        timer.start(self._tick)
        self.timer = timer

    def _tick(self) -> None:
        sub, settings = self.sub, self.state.settings
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if sub.closed:
            return
        now, wall = time.monotonic(), time.time()
        if self.expires_at is not None and wall >= self.expires_at:
            metrics.REFUSALS.labels("401").inc()
            sub.close("expired", encode(event="error", data=serialize({"error": "token expired", "code": 401})))
            return
        if self.ends_at is not None and now >= self.ends_at:
            sub.close("lifetime", encode(retry=jittered(settings.retry_ms)))
            return
        if self.warn_at is not None and self.expires_at is not None and wall >= self.warn_at:
            self.warn_at = None
            sub.send(_expiring(self.expires_at, wall))
        if now >= self.next_beat:
            self.next_beat = now + settings.heartbeat_interval
            sub.send(encode(id=sub.cursor, event="heartbeat", data="{}"))
        if not sub.closed:
            self._arm()


def _expiring(expires_at: float, now: float) -> bytes:
    data = {
        "type": "token-expiring",
        "expiresAt": int(expires_at),
        "expiresIn": max(0, int(expires_at - now)),
    }
    return encode(event="token-expiring", data=serialize(data))


def _reset(reason: str, at: int) -> bytes:
    return encode(id=at, event="reset", data=serialize({"type": "reset", "reason": reason}))


def _send_with_head(response: Any, data: bytes) -> None:
    """Send gunicorn's status line and headers and the first chunk of the body in one write
    (gunicorn's ``write`` sends them in two), with the ``Date`` of the current second."""
    head = [
        f"HTTP/1.1 {response.status}\r\n",
        f"Server: {response.version}\r\n",
        f"Date: {http_date()}\r\n",
        f"Connection: {'close' if response.should_close() else 'keep-alive'}\r\n",
        "Transfer-Encoding: chunked\r\n",
        *(f"{name}: {value}\r\n" for name, value in response.headers),
        "\r\n",
    ]
    response.headers_sent = True
    response.sent += len(data)
    response.sock.sendall("".join(head).encode("latin-1") + chunked(data))
