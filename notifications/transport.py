"""One stream's bytes: its queue, the socket writes, backpressure and chunked framing.

``Subscriber`` is what the hub (``fanout.Hub``) routes events to; everything it does with them
happens here. Before the stream is live (while its connect message and replay are written)
events wait in ``early``. Once live it is in one of two modes:

* **detached** (plain HTTP/1.1 under gunicorn): the stream owns its socket and no greenlet.
  Events, heartbeats and the last frame are written straight to the socket with non-blocking
  sends, each event already framed as an HTTP chunk; what does not fit waits in ``queue`` for a
  libev write watcher, and a queue that reaches ``limit`` marks a slow consumer.
* **attached** (TLS, another server, HEAD): the stream's greenlet yields frames to the server;
  they wait in ``queue`` and ``wakeup`` wakes it.

A libev read watcher on the socket notices a client that hangs up, without a greenlet.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event

from . import metrics

CONTENT_TYPE = "text/event-stream; charset=utf-8"
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # plain ints: an enum.Flag's | costs a call
_DONTWAIT = int(socket.MSG_DONTWAIT)


def stream_headers(extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The response headers of a stream (an admitted one or a refusal)."""
    return [("Content-Type", CONTENT_TYPE), *STREAM_HEADERS.items(), *extra]


def chunked(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, framed exactly as gunicorn frames a yielded chunk."""
    return b"%X\r\n%b\r\n" % (len(data), data)


class Subscriber:
    """One open stream: who it is, what it reads, and how its bytes reach the client (see the
    module docstring)."""

    __slots__ = (
        "user_id",
        "subject",
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

    def __init__(
        self, user_id: str, channels: Iterable[str], limit: int, client: Any = None, subject: str | None = None
    ) -> None:
        self.user_id = user_id  # whose targeted events it reads
        self.subject = user_id if subject is None else subject  # who opened it (the token's sub)
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
            data = self.client.recv(1, _PEEK)
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
            while self.client.recv(65536, _DONTWAIT):
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

    def push(self, event_id: int, frame: bytes, chunk: bytes | None = None) -> bool:
        """An event for this stream (``chunk``: the same frame as one HTTP chunk); False when
        it is dropped (the stream is closed, or already has it)."""
        if self.closed:
            return False
        if not self.live:
            if len(self.early) >= self.limit:
                self.close("slow")
                return False
            self.early.append((event_id, frame))
            return True
        if event_id <= self.cursor:
            return False
        self.cursor = event_id
        self.sent += 1
        self.send(frame, chunk)
        return not self.closed

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
