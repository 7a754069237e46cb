"""A real Server-Sent Events client over a raw socket, for tests.

It speaks HTTP/1.1 itself, or HTTP/1.0 with ``http_version="1.0"`` (so it sees the exact bytes the
server sends, chunked or not), parses the body incrementally per the WHATWG "event stream
interpretation" rules, and keeps both the raw body and every parsed message with its arrival
time. One reader thread per client; every public method is safe to call from any thread.

Parsing rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end with CRLF, LF or CR; a blank line dispatches; a line starting with ``:`` is a comment;
``field: value`` drops one leading space from the value; ``data`` lines are joined with ``\\n``;
``id`` containing NUL is ignored; ``retry`` counts only if all ASCII digits. Unlike a browser we
also record blocks that carry no ``data`` (for example the lone ``retry:`` line) as messages, so
tests can assert on every block on the wire; :attr:`Message.is_event` tells which ones a browser
would dispatch.
"""

from __future__ import annotations

import codecs
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

DEFAULT_TIMEOUT = 10.0
STREAM_PATH = "/api/notifications/stream"


class SSETimeout(AssertionError):
    """A wait on the stream ran past its deadline (an AssertionError so pytest shows it plainly)."""


@dataclass(frozen=True)
class Message:
    """One blank-line-terminated block of the event stream."""

    id: str | None  # the ``id`` field of this block, None if the block had none
    event: str | None  # the ``event`` field of this block, None if absent
    data: str | None  # data lines joined with "\n", None if the block had no data line
    retry: int | None  # a valid ``retry`` field, else None
    raw: bytes  # the block exactly as received (its lines and the blank line)
    at: float  # time.monotonic() when the block was complete
    last_event_id: str  # the client's last-event-ID buffer after this block (WHATWG)
    comments: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()  # every field line in order

    @property
    def type(self) -> str:
        """The event type a browser would dispatch (``message`` when no ``event`` field)."""
        return self.event or "message"

    @property
    def is_event(self) -> bool:
        """Whether a browser would dispatch this block (it has data)."""
        return self.data is not None

    def json(self) -> Any:
        assert self.data is not None, f"message has no data: {self.raw!r}"
        return json.loads(self.data)

    @property
    def int_id(self) -> int:
        assert self.id is not None and self.id.isdigit(), f"message has no numeric id: {self.raw!r}"
        return int(self.id)


class SSEParser:
    """Incremental WHATWG event-stream parser; feed bytes, collect :class:`Message` objects."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._first = True
        self._raw_lines: list[str] = []
        self._fields: list[tuple[str, str]] = []
        self._comments: list[str] = []
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] | None = None
        self._retry: int | None = None
        self.last_event_id = ""

    def feed(self, chunk: bytes, final: bool = False) -> list[Message]:
        self._text += self._decoder.decode(chunk, final)
        if self._first and self._text:
            if self._text.startswith("\ufeff"):
                self._text = self._text[1:]
            self._first = False
        out: list[Message] = []
        text = self._text
        pos = 0
        n = len(text)
        while pos < n:
            i_lf = text.find("\n", pos)
            i_cr = text.find("\r", pos)
            if i_lf < 0 and i_cr < 0:
                break
            if i_cr >= 0 and (i_lf < 0 or i_cr < i_lf):
                end = i_cr
                if end + 1 < n:
                    term_len = 2 if text[end + 1] == "\n" else 1
                elif final:
                    term_len = 1
                else:
                    break  # a CR at the end of the buffer: wait to see whether LF follows
            else:
                end = i_lf
                term_len = 1
            line = text[pos:end]
            self._raw_lines.append(text[pos : end + term_len])
            pos = end + term_len
            msg = self._line(line)
            if msg is not None:
                out.append(msg)
        self._text = text[pos:]
        return out

    def _line(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self._comments.append(line[1:])
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._fields.append((name, value))
        if name == "event":
            self._event = value
        elif name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self._retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        raw = "".join(self._raw_lines).encode("utf-8")
        has_content = bool(self._fields or self._comments)
        msg = None
        if has_content:
            msg = Message(
                id=self._id,
                event=self._event,
                data=None if self._data is None else "\n".join(self._data),
                retry=self._retry,
                raw=raw,
                at=time.monotonic(),
                last_event_id=self.last_event_id,
                comments=tuple(self._comments),
                fields=tuple(self._fields),
            )
        self._raw_lines = []
        self._fields = []
        self._comments = []
        self._id = self._event = None
        self._data = None
        self._retry = None
        return msg


def parse(body: bytes) -> list[Message]:
    """Parse a complete event-stream body (convenience for unit tests)."""
    parser = SSEParser()
    return parser.feed(body, final=True)


class _Dechunker:
    """Incremental HTTP/1.1 chunked transfer-decoding."""

    def __init__(self) -> None:
        self.buf = b""
        self.remaining: int | None = None  # bytes left in the current chunk, None = read size
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while not self.done:
            if self.remaining is None:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    break
                size_text = self.buf[:eol].split(b";", 1)[0].strip()
                self.buf = self.buf[eol + 2 :]
                size = int(size_text, 16)
                if size == 0:
                    self.done = True  # trailers, if any, are ignored
                    break
                self.remaining = size
            elif self.remaining > 0:
                # hand over partial chunks at once: a stream must be readable incrementally
                if not self.buf:
                    break
                take = min(len(self.buf), self.remaining)
                out += self.buf[:take]
                self.buf = self.buf[take:]
                self.remaining -= take
            else:  # chunk data complete, its CRLF pending
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.remaining = None
        return bytes(out)


class SSEClient:
    """Open a GET on an event stream and read it in a background thread."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = STREAM_PATH,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        name: str = "",
        http_version: str = "1.1",
    ) -> None:
        self.host = host
        self.port = port
        query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params or ()))
        self.target = path + ("?" + query if query else "")
        self.name = name or self.target
        self.status: int | None = None
        self.reason = ""
        self.header_list: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._cursor = 0  # index of the next message next_*/wait_for look at
        self._raw = bytearray()
        self._closed = False  # the server ended the response, or the socket failed
        self._close_reason = ""
        self._head_done = False
        self._parser = SSEParser()
        self._stopping = False
        self.opened_at = time.monotonic()

        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_address: tuple[str, int] = self.sock.getsockname()[:2]
        lines = [
            f"GET {self.target} HTTP/{http_version}",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
            "User-Agent: notifications-tests",
        ]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(request)
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._read_loop, name=f"sse:{self.name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- reading (thread)

    def _read_loop(self) -> None:
        head = b""
        dechunker: _Dechunker | None = None
        length: int | None = None
        reason = "server closed the connection"
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError as exc:
                    reason = "closed by client" if self._stopping else f"socket error: {exc!r}"
                    break
                if not data:
                    if self._stopping:
                        reason = "closed by client"
                    break
                if not self._head_done:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    data = head[end + 4 :]
                    self._parse_head(head[:end].decode("latin-1"))
                    te = self.header("transfer-encoding") or ""
                    if "chunked" in te.lower():
                        dechunker = _Dechunker()
                    elif self.header("content-length") is not None:
                        length = int(self.header("content-length") or "0")
                if dechunker is not None:
                    body = dechunker.feed(data)
                elif length is not None:
                    body = data[:length]
                    length -= len(body)
                else:
                    body = data
                self._body(body)
                if (dechunker is not None and dechunker.done) or length == 0:
                    reason = "response ended"
                    break
        finally:
            self._body(b"", final=True)
            with self._cond:
                self._closed = True
                self._close_reason = reason
                self._head_done = True
                self._cond.notify_all()

    def _parse_head(self, head: str) -> None:
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        with self._cond:
            self.http_version = parts[0]
            self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            for line in header_lines:
                key, _, value = line.partition(":")
                self.header_list.append((key.strip(), value.strip()))
            self._head_done = True
            self._cond.notify_all()

    def _body(self, body: bytes, final: bool = False) -> None:
        messages = self._parser.feed(body, final=final)
        with self._cond:
            self._raw += body
            self._messages.extend(messages)
            if body or messages:
                self._cond.notify_all()

    # ---------------------------------------------------------------- public API

    def header(self, name: str) -> str | None:
        """The value of a response header (case-insensitive), or None."""
        for key, value in self.header_list:
            if key.lower() == name.lower():
                return value
        return None

    def headers_all(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k.lower() == name.lower()]

    def wait_headers(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the status line and headers; return the status code."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._head_done, timeout):
                raise SSETimeout(f"{self.name}: no response headers within {timeout}s")
            if self.status is None:
                raise SSETimeout(f"{self.name}: connection ended before any response ({self._close_reason})")
            return self.status

    @property
    def raw(self) -> bytes:
        with self._cond:
            return bytes(self._raw)

    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return list(self._messages)

    @property
    def events(self) -> list[Message]:
        """Messages a browser would dispatch (those with data), heartbeats included."""
        return [m for m in self.messages if m.is_event]

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def _describe(self) -> str:
        with self._cond:
            msgs = self._messages[-12:]
            state = f"closed ({self._close_reason})" if self._closed else "open"
            lines = [
                f"stream {self.name!r}: status={self.status} {state}, "
                f"{len(self._messages)} messages, read cursor at {self._cursor}; last messages:"
            ]
            lines += [f"  {m.raw!r}" for m in msgs]
            if self._parser._text:
                lines.append(f"  (incomplete: {self._parser._text!r})")
            return "\n".join(lines)

    def wait_for(
        self,
        predicate: Callable[[Message], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "a matching message",
        consume: bool = True,
    ) -> Message:
        """Return the first message at or after the read cursor that satisfies ``predicate``.

        With ``consume`` the read cursor moves past it. Fails with a clear message on deadline
        or if the stream ends first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            scan = self._cursor
            while True:
                while scan < len(self._messages):
                    msg = self._messages[scan]
                    scan += 1
                    if predicate(msg):
                        if consume:
                            self._cursor = scan
                        return msg
                if self._closed:
                    raise SSETimeout(f"stream ended before {what} arrived\n{self._describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SSETimeout(f"no {what} within {timeout}s\n{self._describe()}")
                self._cond.wait(left)

    def next_message(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """The next block of any kind (``retry``-only blocks included)."""
        return self.wait_for(lambda m: True, timeout, what="next message")

    def next_event(self, timeout: float = DEFAULT_TIMEOUT, skip_heartbeats: bool = True) -> Message:
        """The next dispatched event, by default skipping heartbeats."""
        return self.wait_for(
            lambda m: m.is_event and not (skip_heartbeats and m.type == "heartbeat"),
            timeout,
            what="next event" + (" (heartbeats skipped)" if skip_heartbeats else ""),
        )

    def wait_for_event(self, event: str, timeout: float = DEFAULT_TIMEOUT, **match: Any) -> Message:
        """Wait for an event of type ``event`` whose JSON data contains the items of ``match``."""

        def pred(m: Message) -> bool:
            if not m.is_event or m.type != event:
                return False
            if not match:
                return True
            try:
                data = m.json()
            except ValueError:
                return False
            return isinstance(data, dict) and all(data.get(k) == v for k, v in match.items())

        return self.wait_for(pred, timeout, what=f"{event!r} event matching {match!r}")

    def wait_for_id(self, event_id: str | int, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Wait for a non-heartbeat event with this id."""
        wanted = str(event_id)
        return self.wait_for(
            lambda m: m.is_event and m.type != "heartbeat" and m.id == wanted,
            timeout,
            what=f"event with id {wanted}",
        )

    def wait_connected(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Wait for the connect notification ("Connected to notification stream")."""
        return self.wait_for(is_connect_message, timeout, what="connect notification", consume=True)

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the server ends the response."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed, timeout):
                raise SSETimeout(f"stream still open after {timeout}s\n{self._describe()}")

    def seek_end(self) -> None:
        """Move the read cursor past everything received so far."""
        with self._cond:
            self._cursor = len(self._messages)

    def close(self) -> None:
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(5)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CONNECT_TEXT = "Connected to notification stream"


def is_connect_message(m: Message) -> bool:
    if not m.is_event or m.type != "notification":
        return False
    try:
        data = m.json()
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("message") == CONNECT_TEXT
