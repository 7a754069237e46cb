"""The attached stream (HTTP/1.0: a generator whose bytes gunicorn sends raw, then closes the
connection) behaves like the detached one, and a detached (HTTP/1.1) stream's body is valid
chunked encoding through to its terminating chunk.

* ``server`` (this module's): ``NOTIFICATIONS_EXPIRY_WARNING=2``, heartbeats every second.
* ``lifetime_server``: ``NOTIFICATIONS_MAX_STREAM_LIFETIME=2`` (streams end after 1.6-2 s).
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import pytest

from tests.support.checks import BLOCK, RETRY_BLOCK, assert_event_block, delivered_ids
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, serving
from tests.support.sse_client import STREAM_PATH, Message, SSEClient, is_connect_message, parse

EXPIRY_WARNING = 2
UNNUMBERED = re.compile(rb"event: ([A-Za-z0-9_.:-]+)\ndata: ([^\r\n]*)\n\n")  # token-expiring, error


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_EXPIRY_WARNING": str(EXPIRY_WARNING)}


@pytest.fixture(scope="module")
def lifetime_server(
    database_url: str, jwt_secret: str, publisher: Publisher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    env = {"NOTIFICATIONS_MAX_STREAM_LIFETIME": "2"}
    yield from serving("lifetime", database_url, jwt_secret, publisher, tmp_path_factory, env=env)


def open_http10(open_stream: Callable[..., SSEClient], token: str, **kwargs: object) -> SSEClient:
    """An HTTP/1.0 stream whose response head says what an attached stream's must say."""
    c = open_stream(token, http_version="1.0", **kwargs)
    assert c.wait_headers() == 200
    assert c.http_version == "HTTP/1.0", c.http_version
    assert (c.header("Content-Type") or "").lower().startswith("text/event-stream"), c.header_list
    assert c.header("Transfer-Encoding") is None, c.header_list
    assert c.header("Content-Length") is None, c.header_list
    assert (c.header("Connection") or "").lower() == "close", c.header_list
    return c


def assert_plain_sse(body: bytes) -> list[Message]:
    """Every block of an HTTP/1.0 body is a whole SSE block of ours: no chunk-size lines."""
    messages = parse(body)
    for m in messages:
        ours = RETRY_BLOCK.fullmatch(m.raw) or BLOCK.fullmatch(m.raw) or UNNUMBERED.fullmatch(m.raw)
        assert ours, f"foreign bytes in the body: {m.raw!r}"
    assert b"".join(m.raw for m in messages) == body, "bytes outside SSE blocks"
    return messages


def is_heartbeat(m: Message) -> bool:
    return m.type == "heartbeat"


def short_token(token: Callable[..., str], user: str, seconds: int = 3) -> tuple[str, int]:
    """A token whose ``exp`` is 3-4 s ahead (``exp`` is whole seconds)."""
    exp = math.ceil(time.time()) + seconds
    return token(user, ttl=exp - int(time.time())), exp


# ---------------------------------------------------------------------------- HTTP/1.0


def test_http10_stream_starts_with_retry_and_connect_then_delivers_live_events_once(
    open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """HTTP/1.0: ``retry:`` first, then the connect message, then a live event exactly once, with
    bytes identical to what an HTTP/1.1 (detached) stream of the same user gets."""
    c = open_http10(open_stream, token(user))
    detached = open_stream(token(user), name="detached")
    first = c.next_message()
    assert RETRY_BLOCK.fullmatch(first.raw), first.raw
    assert c.raw.startswith(b"retry: ")
    assert first.retry is not None and 1500 <= first.retry <= 4500, first.retry
    assert is_connect_message(c.next_message())
    detached.wait_connected()

    event_id = publisher.notify("live over HTTP/1.0", user_id=user, title="attached")
    sentinel = publisher.notify("sentinel", user_id=user)
    got = c.wait_for_id(event_id)
    assert_event_block(
        got,
        "notification",
        {
            "type": "notification",
            "notificationType": "info",
            "title": "attached",
            "message": "live over HTTP/1.0",
            "duration": 5000,
        },
        event_id=event_id,
    )
    c.wait_for_id(sentinel)
    assert delivered_ids(c) == [event_id, sentinel], [m.raw for m in c.messages]
    assert detached.wait_for_id(event_id).raw == got.raw
    assert c.raw.count(got.raw) == 1
    assert_plain_sse(c.raw)
    assert not c.closed


def test_http10_heartbeats_carry_the_cursor(
    open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """HTTP/1.0: heartbeats arrive about every second and carry the id of the last event."""
    c = open_http10(open_stream, token(user))
    connect = c.wait_connected()
    beats = [c.wait_for(is_heartbeat, timeout=3, what=f"heartbeat {i}") for i in range(2)]
    for beat in beats:
        assert beat.raw == b"id: " + (connect.id or "").encode() + b"\nevent: heartbeat\ndata: {}\n\n", beat.raw
    assert 0.4 <= beats[1].at - beats[0].at <= 2.5, beats[1].at - beats[0].at
    event_id = publisher.notify("moves the cursor", user_id=user)
    c.wait_for_id(event_id)
    beat = c.wait_for(is_heartbeat, timeout=3, what="heartbeat after the event")
    assert beat.id == str(event_id), beat.raw
    assert_plain_sse(c.raw)


def test_http10_last_event_id_replays_exactly_what_was_missed(
    open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """HTTP/1.0 with ``Last-Event-ID``: the missed events of this user (and broadcasts), in order,
    once each, then live events; another user's event is not replayed."""
    seen = publisher.notify("already seen", user_id=user)
    missed = [
        publisher.notify("missed 1", user_id=user),
        publisher.notify("not for you", user_id=user + "-other"),
        publisher.publish("missed-2", {"n": 2}, user_id=user),
        publisher.notify("missed broadcast"),
    ]
    c = open_http10(open_stream, token(user), headers={"Last-Event-ID": str(seen)})
    assert c.next_message().retry is not None
    connect = c.next_message()
    assert is_connect_message(connect) and connect.id == str(seen), connect.raw
    live = publisher.notify("live after replay", user_id=user)
    c.wait_for_id(live)
    expected = publisher.visible_ids(user, after=seen)
    assert missed[1] not in expected and live in expected
    assert delivered_ids(c, after=seen) == expected
    assert_plain_sse(c.raw)


def test_http10_token_expiry_warns_then_refuses_with_401_and_closes(
    open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """HTTP/1.0 with a token about to expire: ``token-expiring`` ~2 s before ``exp``, an ``error``
    401 at ``exp`` as the very last bytes, then the server closes the connection."""
    tok, exp = short_token(token, user)
    c = open_http10(open_stream, tok)
    c.wait_connected()
    c.wait_for_id(publisher.notify("before expiry", user_id=user))
    warning = c.wait_for_event("token-expiring", timeout=6)
    assert warning.json() == {"type": "token-expiring", "expiresAt": exp, "expiresIn": warning.json()["expiresIn"]}
    assert warning.json()["expiresIn"] in (1, 2), warning.json()
    error = c.wait_for_event("error", timeout=4)
    errored_at = time.time() - (time.monotonic() - error.at)
    assert error.json()["code"] == 401, error.json()
    assert errored_at >= exp - 0.05, f"refused {exp - errored_at:.2f}s before exp"
    c.wait_closed(timeout=3)
    assert c.messages[-1] == error, [m.raw for m in c.messages[-3:]]
    assert c.raw.endswith(error.raw)
    assert_plain_sse(c.raw)


def test_http10_stream_ends_on_its_max_lifetime_with_retry_then_eof(
    lifetime_server: GunicornServer, token: Callable[..., str], user: str
) -> None:
    """HTTP/1.0 on a 2 s max lifetime: the body ends with a fresh ``retry:`` (no error), then the
    server closes the connection."""
    with lifetime_server.stream(token(user), http_version="1.0") as c:
        assert c.wait_headers() == 200
        assert c.header("Transfer-Encoding") is None, c.header_list
        c.wait_connected()
        c.wait_closed(timeout=5)
        last = c.messages[-1]
        assert last.retry is not None and last.data is None, last.raw
        assert 1500 <= last.retry <= 4500, last.retry
        assert 1.5 <= last.at - c.opened_at <= 3.0, last.at - c.opened_at
        assert not [m for m in c.events if m.type == "error"], c.raw
        assert c.raw.endswith(last.raw)
        assert_plain_sse(c.raw)


# ---------------------------------------------------------------------------- HTTP/1.1 wire


def read_chunks(wire: bytes) -> tuple[list[bytes], bytes]:
    """Decode a chunked body strictly: ``HEX CRLF data CRLF`` ... ``0 CRLF CRLF``. Return the
    chunks' payloads and whatever follows the terminating chunk."""
    chunks: list[bytes] = []
    pos = 0
    while True:
        eol = wire.find(b"\r\n", pos)
        assert eol > pos, f"no chunk-size line at byte {pos}: {wire[pos : pos + 40]!r}"
        size_line = wire[pos:eol]
        assert re.fullmatch(rb"[0-9A-Fa-f]+", size_line), f"bad chunk-size line {size_line!r} at byte {pos}"
        size = int(size_line, 16)
        pos = eol + 2
        if size == 0:
            assert wire[pos : pos + 2] == b"\r\n", f"terminating chunk not followed by CRLF: {wire[pos:]!r}"
            return chunks, wire[pos + 2 :]
        data = wire[pos : pos + size]
        assert len(data) == size, f"chunk of {size} bytes cut short: {data!r}"
        assert wire[pos + size : pos + size + 2] == b"\r\n", (
            f"chunk not followed by CRLF: {wire[pos : pos + size + 4]!r}"
        )
        chunks.append(data)
        pos += size + 2


def test_http11_lifetime_end_is_valid_chunked_encoding_to_the_terminating_chunk(
    lifetime_server: GunicornServer, token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """HTTP/1.1 (detached) on a 2 s max lifetime, read off the raw socket: every byte after the head
    is a well-formed chunk holding whole SSE blocks (retry, connect, a live event, heartbeats); the
    last chunk is the farewell ``retry:``, then ``0\\r\\n\\r\\n``, then EOF."""
    query = urlencode({"token": token(user)})
    request = f"GET {STREAM_PATH}?{query} HTTP/1.1\r\nHost: {lifetime_server.host}:{lifetime_server.port}\r\n"
    request += "Accept: text/event-stream\r\n\r\n"
    sock = socket.create_connection((lifetime_server.host, lifetime_server.port), timeout=5)
    wire = b""
    event_id: int | None = None
    eof = False
    deadline = time.monotonic() + 8
    try:
        sock.sendall(request.encode())
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                eof = True
                break
            wire += data
            if event_id is None and b"Connected to notification stream" in wire:
                event_id = publisher.notify("during a detached stream", user_id=user)
    finally:
        sock.close()
    assert eof, f"no EOF within 8 s of a 2 s lifetime; got {wire[-300:]!r}"
    assert event_id is not None, wire
    head, sep, body = wire.partition(b"\r\n\r\n")
    assert sep, wire
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 200"), status_line
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    assert headers.get("transfer-encoding", "").lower() == "chunked", headers
    assert headers.get("content-type", "").startswith("text/event-stream"), headers

    chunks, after = read_chunks(body)
    assert after == b"", f"bytes after the terminating chunk: {after!r}"
    assert all(chunk.endswith(b"\n\n") for chunk in chunks), f"a chunk splits an SSE block: {chunks!r}"
    messages = parse(b"".join(chunks))
    assert RETRY_BLOCK.fullmatch(messages[0].raw), messages[0].raw
    assert is_connect_message(messages[1]), messages[1].raw
    assert [m.int_id for m in messages if m.type == "notification" and not is_connect_message(m)] == [event_id]
    last = messages[-1]
    assert last.retry is not None and last.data is None, last.raw
    assert chunks[-1] == last.raw, f"last chunk is not the farewell retry alone: {chunks[-1]!r}"
    assert not [m for m in messages if m.type == "error"], messages
