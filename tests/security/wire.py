"""Small wire-level helpers for the security tier (no dependency beyond the standard library and
tests/support): plain HTTP requests, raw stream attempts from any loopback address, and the live
client that must keep receiving events while the server is being attacked."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer
from tests.support.sse_client import Message, SSEParser, _Dechunker, is_connect_message
from tests.support.tokens import mint

STREAM = "/api/notifications/stream"
PUBLISH = "/api/notifications/publish"
TICKET = "/api/notifications/ticket"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    srv: GunicornServer,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One plain HTTP request (not for open streams: it reads the whole body)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def publish(
    srv: GunicornServer,
    bearer: str | None,
    payload: Any,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    body = raw if raw is not None else json.dumps(payload).encode()
    return request(srv, "POST", PUBLISH, body, hdrs)


@dataclass
class Attempt:
    """What a stream attempt got on the wire: status, headers, the first messages."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    messages: list[Message] = field(default_factory=list)
    ended: bool = False  # the server ended the response

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def error(self) -> dict[str, Any] | None:
        for m in self.messages:
            if m.is_event and m.type == "error":
                data: dict[str, Any] = m.json()
                return data
        return None

    @property
    def connected(self) -> bool:
        return any(is_connect_message(m) for m in self.messages)


def attempt(
    srv: GunicornServer,
    target: str,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    source: str | None = None,
    timeout: float = 8.0,
    raw_request: bytes | None = None,
    sock: socket.socket | None = None,
) -> Attempt:
    """Send one GET (or ``raw_request`` as is) and read until the stream answers: an ``error``
    event, the connect message, or the end of the response. Closes the connection after, unless
    it was given (``sock``, from ``idle_connections``): then an admitted stream stays open until
    the caller closes it."""
    own = sock is None
    if sock is None:
        sock = socket.create_connection(
            (srv.host, srv.port), timeout=timeout, source_address=(source, 0) if source else None
        )
    try:
        if raw_request is None:
            items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
            lines = [f"GET {target} HTTP/1.1", f"Host: {srv.host}:{srv.port}", "Accept: text/event-stream"]
            lines += [f"{k}: {v}" for k, v in items]
            raw_request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        sock.sendall(raw_request)
        deadline = time.monotonic() + timeout
        head = b""
        status: int | None = None
        hdrs: list[tuple[str, str]] = []
        body = bytearray()
        parser = SSEParser()
        messages: list[Message] = []
        dechunker: _Dechunker | None = None
        length: int | None = None
        ended = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                ended = True
                break
            if not data:
                ended = True
                break
            if status is None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                status_line, *lines = head[:end].decode("latin-1").split("\r\n")
                status = int(status_line.split(" ", 2)[1])
                if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
                    head, status = head[end + 4 :], None
                    continue
                hdrs = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines)]
                data = head[end + 4 :]
                te = next((v for k, v in hdrs if k.lower() == "transfer-encoding"), "")
                cl = next((v for k, v in hdrs if k.lower() == "content-length"), None)
                if "chunked" in te.lower():
                    dechunker = _Dechunker()
                elif cl is not None:
                    length = int(cl)
            if dechunker is not None:
                chunk = dechunker.feed(data)
            elif length is not None:
                chunk = data[:length]
                length -= len(chunk)
            else:
                chunk = data
            body += chunk
            messages += parser.feed(chunk)
            if (dechunker is not None and dechunker.done) or length == 0:
                ended = True
                break
            if any(m.is_event and (m.type == "error" or is_connect_message(m)) for m in messages):
                # the answer is known; a refusal ends right after its error event
                if any(m.is_event and m.type == "error" for m in messages):
                    continue
                break
        return Attempt(status, hdrs, bytes(body), messages, ended)
    finally:
        if own:
            sock.close()


def idle_connections(
    srv: GunicornServer, per_worker: int, source: str | None = None, timeout: float = 10.0
) -> list[tuple[socket.socket, int]]:
    """Open connections to ``srv`` until each of its workers has accepted ``per_worker`` of them
    (surplus ones are closed), with no request sent yet; return them with the pid of the worker
    that will serve their request. A connection stays with the worker that accepted it, and
    gunicorn waits ``keepalive`` (5 s) for its first request: send it before then."""
    pids = srv.worker_pids()
    taken: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    deadline = time.monotonic() + timeout
    try:
        while any(len(socks) < per_worker for socks in taken.values()):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"could not get {per_worker} connections accepted by each worker within {timeout}s: "
                    f"{ {pid: len(socks) for pid, socks in taken.items()} }"
                )
            sock = socket.create_connection(
                (srv.host, srv.port), timeout=5, source_address=(source, 0) if source else None
            )
            pid = None
            while pid is None and time.monotonic() < deadline:
                pid = srv.worker_of_address(sock.getsockname()[:2])
                if pid is None:
                    time.sleep(0.01)  # the worker has not accepted it yet: polled with a deadline
            if pid in taken and len(taken[pid]) < per_worker:
                taken[pid].append(sock)
            else:
                sock.close()  # surplus on a worker that has its share (or a worker gone)
    except BaseException:
        for socks in taken.values():
            for sock in socks:
                sock.close()
        raise
    return [(sock, pid) for pid, socks in taken.items() for sock in socks]


class Live:
    """Streams of one user on every worker of a server, and a check that they still receive.

    ``check()`` publishes an event targeted to that user from the pytest process and waits until
    every live stream received it: the server is alive, its workers too, and fan-out works.
    """

    def __init__(self, srv: GunicornServer, publisher: Publisher, secret: str, user: str) -> None:
        self.srv = srv
        self.publisher = publisher
        self.user = user
        token = mint(secret, user)
        self.clients, self.per_worker = srv.open_on_all_workers(
            lambda i: srv.stream(token=token, name=f"live-{user}-{i}"), minimum=2
        )
        for c in self.clients:
            c.wait_connected()
        self.checks = 0

    def check(self, what: str = "", timeout: float = 8.0) -> None:
        self.checks += 1
        event_id = self.publisher.publish("live-check", {"n": self.checks, "after": what[:200]}, user_id=self.user)
        for c in self.clients:
            assert not c.closed, f"a live stream was closed (after {what!r})\n{self.srv.log_tail(4000)}"
            c.wait_for_id(event_id, timeout=timeout)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def never_received(client: Any, sentinel_id: int | str, forbidden: Any) -> None:
    """Once ``sentinel_id`` (published after the ``forbidden`` ids) has arrived, none of those may
    have arrived: delivery is in id order. Does not move the client's read cursor."""
    wanted = str(sentinel_id)
    client.wait_for(lambda m: m.is_event and m.id == wanted, what=f"event with id {wanted}", consume=False)
    bad = {str(i) for i in forbidden}
    seen = [m.raw for m in client.messages if m.is_event and m.type != "heartbeat" and m.id in bad]
    assert not seen, f"stream {client.name!r} received events not meant for it: {seen}"
