"""The stream fast path: a ``?token=`` a worker has already verified is admitted in front of Flask,
with the same answers as the Flask path, and an app with request hooks of its own gets none.

Every test first connects with a token on every worker (``warm``: the first connection is the
Flask path, and afterwards every worker knows the token), then connects again with the same token:
that second connection takes the fast path. Tokens carry a random ``jti`` so no two are equal.

* ``server`` (this module's): public channels ``news,sports``.
* ``cap_server``: ``NOTIFICATIONS_MAX_STREAMS_PER_USER=2``, one worker.
* ``hooked_server``: ``tests.support.hooked_app`` (``before_request`` / ``after_request`` hooks).
* ``proxied``: ``tests.support.proxied_app``, werkzeug's ``ProxyFix`` applied before and (a second
  server) after ``Notifications(app)``, with ``NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS=3/minute``;
  loopback stays exempt from it (the default), so only connects that see their forwarded
  address count, and one that saw ``127.0.0.1`` (in front of ``ProxyFix``) would never be refused.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.support.checks import RETRY_BLOCK, assert_refused, delivered_ids, fresh_window, wait_until
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, serving
from tests.support.sse_client import SSEClient, is_connect_message

STREAM_HEADERS = ("Content-Type", "Cache-Control", "X-Accel-Buffering")
HOOK_HEADER = "X-Host-Hook"  # set by tests.support.hooked_app's after_request
PER_ADDRESS = 3  # NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS of the proxied servers, per minute


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": "news,sports"}


@pytest.fixture(scope="module")
def cap_server(
    database_url: str, jwt_secret: str, publisher: Publisher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    """One worker, so the token the first stream leaves in its cache serves every later stream."""
    env = {"NOTIFICATIONS_MAX_STREAMS_PER_USER": "2"}
    yield from serving("cap", database_url, jwt_secret, publisher, tmp_path_factory, env=env, workers=1)


@pytest.fixture(scope="module")
def hooked_server(
    database_url: str, jwt_secret: str, publisher: Publisher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    app = "tests.support.hooked_app:app"
    yield from serving("hooked", database_url, jwt_secret, publisher, tmp_path_factory, app=app)


@dataclass
class Proxied:
    server: GunicornServer
    addresses: Iterator[str]  # forwarded addresses no other test of this server uses


@pytest.fixture(scope="module", params=["before", "after"])
def proxied(
    request: pytest.FixtureRequest,
    database_url: str,
    jwt_secret: str,
    publisher: Publisher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxied]:
    order = request.param
    app = f"tests.support.proxied_app:create_app({order!r})"
    env = {"NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": f"{PER_ADDRESS}/minute"}
    first = 10 if order == "before" else 100  # the two servers share the module's database
    for srv in serving(f"proxied-{order}", database_url, jwt_secret, publisher, tmp_path_factory, app=app, env=env):
        yield Proxied(srv, (f"203.0.113.{n}" for n in itertools.count(first)))


@pytest.fixture
def fresh(token: Callable[..., str], user: str) -> Callable[..., str]:
    """``fresh(sub=user)``: a token no worker has seen yet."""

    def make(sub: str = user) -> str:
        return token(sub, jti=secrets.token_hex(8))

    return make


def warm(srv: GunicornServer, tok: str, clients: list[SSEClient], **kwargs: Any) -> list[SSEClient]:
    """Connect with ``tok`` until every worker holds a connected stream of it; the first of the
    returned streams was the token's first use (the Flask path)."""
    opened, _ = srv.open_on_all_workers(lambda i: srv.stream(tok, name=f"warm-{i}", **kwargs), minimum=srv.workers)
    clients.extend(opened)
    for c in opened:
        c.wait_connected()
    return opened


def open_on(srv: GunicornServer, clients: list[SSEClient], tok: str, **kwargs: Any) -> SSEClient:
    c = srv.stream(tok, **kwargs)
    clients.append(c)
    return c


def head(c: SSEClient) -> list[tuple[str, str]]:
    """The response's status line and headers, but the ``Date``."""
    return sorted(
        [("status", f"{c.http_version} {c.status} {c.reason}")]
        + [(k.lower(), v) for k, v in c.header_list if k.lower() != "date"]
    )


# ---------------------------------------------------------------------------- same answers


def test_second_connection_has_the_same_head_and_messages_as_the_first(
    server: GunicornServer, fresh: Callable[..., str], user: str, publisher: Publisher, clients: list[SSEClient]
) -> None:
    """Same token twice: the second connection's status, headers (Content-Type, Cache-Control,
    X-Accel-Buffering, chunked) and messages (``retry:``, connect message, live events with the
    same bytes, heartbeats with the cursor) are those of the first."""
    tok = fresh()
    first = warm(server, tok, clients)[0]
    second = open_on(server, clients, tok, name="second")
    assert second.wait_headers() == first.wait_headers() == 200
    assert head(second) == head(first)
    for name in STREAM_HEADERS:
        assert second.header(name) is not None and second.header(name) == first.header(name), name
    assert (second.header("Content-Type") or "").startswith("text/event-stream")
    second.wait_connected()
    for c in (first, second):
        assert RETRY_BLOCK.fullmatch(c.messages[0].raw), c.messages[0].raw
        assert is_connect_message(c.messages[1]), c.messages[1].raw
    assert second.messages[1].data == first.messages[1].data

    live = publisher.notify("to both", user_id=user)
    assert second.wait_for_id(live).raw == first.wait_for_id(live).raw
    beat = second.wait_for(lambda m: m.type == "heartbeat", timeout=3, what="heartbeat")
    assert beat.raw == f"id: {live}\nevent: heartbeat\ndata: {{}}\n\n".encode()


def test_a_live_stream_has_the_server_headers_gunicorn_writes(
    server: GunicornServer, fresh: Callable[..., str], clients: list[SSEClient]
) -> None:
    """A live stream sends its status line and headers with its first chunk, in one write: the
    same status, headers and order gunicorn writes for a response of its own (a refusal, also
    200 and chunked), and a ``Date`` of now."""
    tok = fresh()
    live = open_on(server, clients, tok, name="live")
    refused = open_on(server, clients, tok, params={"channels": "news,secret"}, name="refused")
    assert live.wait_headers() == refused.wait_headers() == 200
    live.wait_connected()
    assert [k for k, _ in live.header_list] == [k for k, _ in refused.header_list]
    assert head(live) == head(refused)
    assert live.header("Transfer-Encoding") == "chunked" and live.header("Connection") == "keep-alive"
    sent = parsedate_to_datetime(live.header("Date") or "")
    assert sent.tzinfo is not None and abs(time.time() - sent.timestamp()) < 30, live.header("Date")


REFUSALS: dict[str, tuple[dict[str, str], int]] = {
    "malformed-channels": ({"channels": "bad name"}, 400),
    "channel-not-readable": ({"channels": "news,secret"}, 403),
    "another-users-id": ({"userId": "someone-else"}, 403),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_on_the_second_connection_match_the_flask_path(
    server: GunicornServer, fresh: Callable[..., str], clients: list[SSEClient], case: str
) -> None:
    """A refused request with a token the worker already knows gets the same refusal (``retry:``,
    one ``error`` event with the same code and data, the end) as with a token seen for the first
    time."""
    params, code = REFUSALS[case]
    with server.stream(fresh(), params=params, name="flask-path") as c:
        expected = assert_refused(c, code)
    tok = fresh()
    warm(server, tok, clients)
    with server.stream(tok, params=params, name="fast-path") as c:
        assert assert_refused(c, code) == expected


def test_reconnect_with_last_event_id_replays_exactly_the_missed_events(
    server: GunicornServer, fresh: Callable[..., str], user: str, publisher: Publisher, clients: list[SSEClient]
) -> None:
    """A reconnect with the same token and ``Last-Event-ID`` replays the missed events this stream
    may see (its user's, its channel's, broadcasts), in order, once, then goes live."""
    tok = fresh()
    warmed = warm(server, tok, clients, params={"channels": "news"})
    seen = publisher.notify("seen", user_id=user)
    for c in warmed:
        c.wait_for_id(seen)
        c.close()
    other = user + "-other"
    published = [
        publisher.notify("mine", user_id=user),
        publisher.notify("not mine", user_id=other),
        publisher.publish("headline", {"n": 1}, channel="news"),
        publisher.publish("goal", {"n": 2}, channel="sports"),
        publisher.notify("everyone"),
        publisher.publish("mine-on-news", {"n": 3}, user_id=user, channel="news"),
        publisher.publish("mine-on-sports", {"n": 4}, user_id=user, channel="sports"),
    ]
    c = open_on(server, clients, tok, params={"channels": "news"}, headers={"Last-Event-ID": str(seen)})
    connect = c.wait_connected()
    assert connect.id == str(seen), connect.raw
    live = publisher.notify("live", user_id=user)
    c.wait_for_id(live)
    expected = publisher.visible_ids(user, ("news",), after=seen)
    assert expected == [published[0], published[2], published[4], published[5], live], expected
    assert delivered_ids(c, after=seen) == expected


def test_per_user_stream_cap_refuses_the_third_stream_of_one_token(
    cap_server: GunicornServer, fresh: Callable[..., str], clients: list[SSEClient]
) -> None:
    """At most 2 streams per user: with one token, the first stream (Flask path) and the second
    (fast path) are admitted, the third gets 429 as on the Flask path, and once a stream closes
    its slot lets the same token in again."""
    tok = fresh()
    open_on(cap_server, clients, tok, name="first").wait_connected()
    second = open_on(cap_server, clients, tok, name="second")
    second.wait_connected()
    with cap_server.stream(tok, name="third") as third:
        data = assert_refused(third, 429)
        assert third.header("Retry-After") == "5", third.header_list
    assert "open streams" in data["error"], data
    with cap_server.stream(fresh(), name="flask-path") as c:
        assert assert_refused(c, 429) == data

    second.close()
    deadline = time.monotonic() + 5  # a closed stream's slot is released within half a second
    while True:
        with cap_server.stream(tok, name="again") as again:
            first = again.wait_for(lambda m: m.is_event, what="connect or refusal")
            if is_connect_message(first):
                break
            assert first.json()["code"] == 429, first.raw
            assert time.monotonic() < deadline, "the closed stream's slot was never released"
        time.sleep(0.1)  # retry pacing, bounded by the deadline


# ---------------------------------------------------------------------------- host app hooks


def test_host_request_hooks_run_for_the_second_connection(
    hooked_server: GunicornServer, fresh: Callable[..., str], user: str, publisher: Publisher, clients: list[SSEClient]
) -> None:
    """In an app with ``before_request`` / ``after_request`` hooks the fast path stands aside: a
    token every worker knows still gets the host's header on its stream, and the host's 403 for
    ``?blocked=1``."""
    tok = fresh()
    for c in warm(hooked_server, tok, clients):
        assert c.header(HOOK_HEADER) == "ran", c.header_list
    second = open_on(hooked_server, clients, tok, name="second")
    assert second.wait_headers() == 200
    assert second.header(HOOK_HEADER) == "ran", second.header_list
    second.wait_connected()
    second.wait_for_id(publisher.notify("hooked", user_id=user))
    with hooked_server.stream(tok, params={"blocked": "1"}, name="blocked") as blocked:
        assert blocked.wait_headers() == 403, blocked.header_list
        blocked.wait_closed()
        assert blocked.raw == b"blocked by the host app\n"
        assert blocked.header(HOOK_HEADER) == "ran"


# ---------------------------------------------------------------------------- host app middleware


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def assert_over_the_address_rate(srv: GunicornServer, tok: str, address: str) -> None:
    with srv.stream(tok, headers=forwarded(address), name=f"over-rate-{address}") as c:
        data = assert_refused(c, 429)
    assert "connection attempts" in data["error"], data


def assert_access_lines(srv: GunicornServer, expected: dict[str, int]) -> None:
    """The access log names each forwarded address as the client of that many stream requests."""

    def counts() -> dict[str, int]:
        lines = srv.log_path.read_text(errors="replace").splitlines()
        return {
            a: sum(1 for line in lines if line.startswith(f"{a} ") and '"GET /api/notifications/stream?' in line)
            for a in expected
        }

    wait_until(lambda: counts() == expected, 5, f"access lines {expected}, got {counts()}")


def test_behind_proxy_fix_first_connects_count_the_forwarded_address(
    proxied: Proxied, fresh: Callable[..., str], user: str, clients: list[SSEClient]
) -> None:
    """First connects of new tokens (other users each) from one forwarded address: the fourth in
    a minute gets 429, while another forwarded address is admitted."""
    srv = proxied.server
    spoofed, other = next(proxied.addresses), next(proxied.addresses)
    fresh_window()
    for i in range(PER_ADDRESS):
        open_on(srv, clients, fresh(f"{user}-{i}"), headers=forwarded(spoofed), name=f"first-{i}").wait_connected()
    assert_over_the_address_rate(srv, fresh(f"{user}-last"), spoofed)
    open_on(srv, clients, fresh(f"{user}-other"), headers=forwarded(other), name="other").wait_connected()
    assert_access_lines(srv, {spoofed: PER_ADDRESS + 1, other: 1})


def test_behind_proxy_fix_a_known_token_counts_the_forwarded_address(
    proxied: Proxied, fresh: Callable[..., str], clients: list[SSEClient]
) -> None:
    """A token every worker already knows (the cached fast path), connecting again and again
    from one forwarded address: the fourth connect in a minute gets 429, while the same token
    from another forwarded address is admitted."""
    srv = proxied.server
    tok = fresh()
    warm(srv, tok, clients)  # from 127.0.0.1 without X-Forwarded-For: exempt from the rate
    spoofed, other = next(proxied.addresses), next(proxied.addresses)
    fresh_window()
    for i in range(PER_ADDRESS):
        open_on(srv, clients, tok, headers=forwarded(spoofed), name=f"again-{i}").wait_connected()
    assert_over_the_address_rate(srv, tok, spoofed)
    open_on(srv, clients, tok, headers=forwarded(other), name="other").wait_connected()
    assert_access_lines(srv, {spoofed: PER_ADDRESS + 1, other: 1})
