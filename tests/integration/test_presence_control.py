"""Presence, disconnect and token revocation (DESIGN §8) across two workers and two instances.

``server`` and ``second`` are two gunicorn instances (two gevent workers each) on one database,
standing in for two machines, with the shipped defaults (the per-user cap on, so presence is
kept). Streams are spread over every worker of both, and each check reads what a user would see:
the JSON of the routes, the ``error`` event a stream ends with, the refusal of a reconnect.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import notifications
from tests.support.checks import assert_refused, wait_until
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, serving
from tests.support.sse_client import SSEClient

PRESENCE = "/api/notifications/presence"
SETTLE = 2.0  # DESIGN §8: a closed stream stops counting, a disconnect ends streams, within 2 s


@pytest.fixture(scope="module")
def second(
    server: GunicornServer,
    database_url: str,
    jwt_secret: str,
    publisher: Publisher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornServer]:
    """Another instance on the same database, as on a second machine."""
    yield from serving("second", database_url, jwt_secret, publisher, tmp_path_factory)


def call(srv: GunicornServer, method: str, path: str, bearer: str | None = None, body: Any = None) -> tuple[int, Any]:
    """One JSON request; the status and the decoded body."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    try:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=raw, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        assert (resp.getheader("Content-Type") or "").startswith("application/json"), payload[:200]
        return resp.status, json.loads(payload)
    finally:
        conn.close()


def presence_of(srv: GunicornServer, bearer: str, **query: str) -> dict[str, Any]:
    status, body = call(srv, "GET", PRESENCE + "?" + "&".join(f"{k}={v}" for k, v in query.items()), bearer)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def everywhere(
    servers: list[GunicornServer], token: str, clients: list[SSEClient], params: dict[str, str] | None = None
) -> list[SSEClient]:
    """A live stream of ``token`` on every worker of every server."""
    opened = []
    for srv in servers:
        streams, _ = srv.open_on_all_workers(lambda i, srv=srv: srv.stream(token, params=params), minimum=srv.workers)
        clients.extend(streams)
        opened.extend(streams)
    for c in opened:
        c.wait_connected()
    return opened


def test_a_user_is_online_while_a_stream_is_open_anywhere(server, second, token, user, clients):
    own = token(user)
    assert presence_of(server, own, userId=user) == {"userId": user, "online": False, "streams": 0}
    streams = everywhere([server, second], own, clients)
    n = len(streams)
    assert n >= 4
    for srv in (server, second):  # every instance sees every stream
        wait_until(lambda srv=srv: presence_of(srv, own, userId=user)["streams"] == n, SETTLE, "all streams counted")
    streams[0].close()
    started = time.monotonic()
    wait_until(lambda: presence_of(second, own, userId=user)["streams"] == n - 1, SETTLE, "a closed stream gone")
    assert time.monotonic() - started < SETTLE
    for c in streams[1:]:
        c.close()
    wait_until(lambda: not presence_of(server, own, userId=user)["online"], SETTLE, "the user offline")


def test_the_python_api_answers_the_same(server, second, publisher, token, user, clients):
    everywhere([second], token(user, notifications={"subscribe": ["py-room"]}), clients, {"channels": "py-room"})
    with publisher.app.app_context():
        wait_until(lambda: notifications.presence.is_online(user), SETTLE, "online through the Python API")
        assert notifications.presence.channel_users("py-room") == [user]
        assert not notifications.presence.is_online(user + "-nobody")


def test_who_reads_a_channel_needs_a_grant(server, second, token, user, clients):
    a, b, c = f"{user}-b", f"{user}-a", f"{user}-c"  # b sorts before a's id: the answer is sorted
    reader = {"subscribe": ["room-*"]}
    of_a = everywhere([server], token(a, notifications=reader), clients, {"channels": "room-x"})
    of_b = everywhere([second], token(b, notifications=reader), clients, {"channels": "room-x,room-y"})
    everywhere([second], token(c), clients)
    watcher = token("watcher", notifications={"subscribe": ["room-*"]})
    wait_until(lambda: presence_of(server, watcher, channel="room-x")["users"] == sorted([a, b]), SETTLE, "readers")
    found = presence_of(second, watcher, channel="room-x")
    assert found["channel"] == "room-x" and found["users"] == sorted([a, b])
    assert found["streams"] == len(of_a) + len(of_b)
    assert presence_of(server, watcher, channel="room-y")["users"] == [b]
    assert presence_of(server, watcher, channel="room-z") == {"channel": "room-z", "users": [], "streams": 0}

    status, body = call(server, "GET", PRESENCE + "?channel=room-x", token(a))  # no grant
    assert (status, body["code"]) == (403, 403), body
    status, body = call(server, "GET", PRESENCE + f"?userId={b}", token(a))
    assert (status, body["code"]) == (403, 403), body
    support = token("support", notifications={"subscribe": [f"user:{b}"]})
    assert presence_of(server, support, userId=b)["online"] is True


@pytest.mark.parametrize(
    "query, bearer, code",
    [
        ("?userId=u1", None, 401),
        ("?userId=u1", "not-a-jwt", 401),
        ("", "valid", 400),
        ("?userId=u1&channel=room-x", "valid", 400),
        ("?channel=bad%20name", "valid", 400),
        ("?channel=a,b", "valid", 400),
        ("?userId=", "valid", 400),
    ],
)
def test_bad_presence_requests_get_a_json_error(server, token, query, bearer, code):
    tok = token("u1", notifications={"subscribe": ["*"]}) if bearer == "valid" else bearer
    status, body = call(server, "GET", PRESENCE + query, tok)
    assert status == code and body["code"] == code and body["error"], body


def test_disconnect_ends_every_stream_of_the_user_and_no_other(server, second, token, user, publisher, clients):
    own = token(user)
    doomed = everywhere([server, second], own, clients)
    bystander = everywhere([server, second], token(f"{user}-other"), clients)
    admin = token("admin", notifications={"publish": [f"user:{user}"]})
    wait_until(lambda: presence_of(server, own, userId=user)["streams"] == len(doomed), SETTLE, "counted")

    started = time.monotonic()
    status, body = call(second, "POST", "/api/notifications/disconnect", admin, {"userId": user, "reason": "bye"})
    assert status == 200 and body == {"streams": len(doomed)}, body
    for c in doomed:
        m = c.wait_for_event("error", timeout=SETTLE)
        assert m.json() == {"error": "disconnected", "code": 401, "reason": "bye"}
        c.wait_closed(timeout=SETTLE)
    assert time.monotonic() - started < SETTLE + 1.0
    event_id = publisher.publish("still-here", {"n": 1})
    for c in bystander:
        c.wait_for_id(event_id)
        assert not c.closed
    # a disconnect alone does not stop a reconnect with a valid token
    again = server.stream(own)
    clients.append(again)
    again.wait_connected()


@pytest.mark.parametrize(
    "body, bearer, code",
    [
        ({"userId": "u2"}, None, 401),
        ({"userId": "u2"}, "no-grant", 403),
        ({"userId": 42}, "grant", 400),
        ({"userId": ""}, "grant", 400),
        ({"reason": "x"}, "grant", 400),
        (b"{not json", "grant", 400),
        (["u2"], "grant", 400),
    ],
)
@pytest.mark.parametrize("route", ["disconnect", "revoke"])
def test_bad_control_requests_get_a_json_error(server, token, route, body, bearer, code):
    tokens = {"no-grant": token("u2"), "grant": token("admin", notifications={"publish": ["user:*"]}), None: None}
    status, answer = call(server, "POST", f"/api/notifications/{route}", tokens[bearer], body)
    assert status == code and answer["code"] == code and answer["error"], answer


def test_a_disconnect_reason_must_be_a_short_string(server, token):
    admin = token("admin", notifications={"publish": ["user:*"]})
    for reason in (7, "x" * 501, ["a"]):
        status, body = call(server, "POST", "/api/notifications/disconnect", admin, {"userId": "u2", "reason": reason})
        assert (status, body["code"]) == (400, 400), body


def test_revoke_ends_streams_and_voids_older_tokens_everywhere(
    server, second, token, user, publisher, jwt_secret, clients
):
    old = token(user, iat=int(time.time()) - 5, notifications={"publish": [f"user:{user}"]})
    status, body = call(server, "POST", "/api/notifications/ticket", old)
    assert status == 201, body
    ticket = body["ticket"]
    doomed = everywhere([server, second], old, clients)
    wait_until(lambda: presence_of(server, old, userId=user)["streams"] == len(doomed), SETTLE, "counted")

    with publisher.app.app_context():
        assert notifications.revoke_tokens(user) == len(doomed)
    for c in doomed:
        m = c.wait_for_event("error", timeout=SETTLE)
        assert m.json()["error"] == "disconnected" and m.json()["code"] == 401
        c.wait_closed(timeout=SETTLE)

    for srv in (server, second):  # the old token is refused on every instance and route
        wait_until(lambda srv=srv: _refused(srv, old), SETTLE, "the old token refused")
        status, body = call(srv, "POST", "/api/notifications/ticket", old)
        assert (status, body) == (401, {"error": "token revoked", "code": 401})
        status, body = call(srv, "POST", "/api/notifications/publish", old, {"event": "x", "data": 1, "userId": user})
        assert (status, body["code"]) == (401, 401), body
        status, body = call(srv, "GET", PRESENCE + f"?userId={user}", old)
        assert status == 401, body
        status, body = call(srv, "GET", "/api/notifications/inbox", old)
        assert (status, body) == (401, {"error": "token revoked", "code": 401})
    refused_ticket = server.stream(params={"ticket": ticket})
    clients.append(refused_ticket)
    assert assert_refused(refused_ticket, 401)["error"] == "token revoked"

    fresh = token(user, notifications={"publish": [f"user:{user}"]})  # issued after the revocation
    for srv in (server, second):
        c = srv.stream(fresh)
        clients.append(c)
        c.wait_connected()
    status, body = call(second, "POST", "/api/notifications/publish", fresh, {"event": "x", "data": 1, "userId": user})
    assert status == 201, body
    with publisher.app.app_context():  # a revocation of a user nobody knows is fine
        assert notifications.revoke_tokens(f"{user}-unknown") == 0


def _refused(srv: GunicornServer, tok: str) -> bool:
    c = srv.stream(tok)
    try:
        data = assert_refused(c, 401)
    except AssertionError:
        return False
    finally:
        c.close()
    return data["error"] == "token revoked"


def test_a_revocation_survives_a_restart(server, database_url, jwt_secret, publisher, token, user, tmp_path_factory):
    old = token(user, iat=int(time.time()) - 5)
    with publisher.app.app_context():
        notifications.revoke_tokens(user)
    with contextmanager(serving)("restarted", database_url, jwt_secret, publisher, tmp_path_factory) as srv:
        assert _refused(srv, old)
        c = srv.stream(token(user))
        try:
            c.wait_connected()
        finally:
            c.close()


def test_the_cli_disconnects_and_revokes(server, second, publisher, token, user, clients):
    streams = everywhere([second], token(user, iat=int(time.time()) - 5), clients)
    runner = publisher.app.test_cli_runner()
    wait_until(lambda: presence_of(second, token(user), userId=user)["streams"] == len(streams), SETTLE, "counted")
    result = runner.invoke(args=["notifications", "disconnect", user, "--reason", "maintenance"])
    assert result.exit_code == 0 and result.output.strip() == str(len(streams)), result.output
    for c in streams:
        assert c.wait_for_event("error", timeout=SETTLE).json()["reason"] == "maintenance"
    old = token(user, iat=int(time.time()) - 5)
    result = runner.invoke(args=["notifications", "revoke", user])
    assert result.exit_code == 0, result.output
    wait_until(lambda: _refused(server, old), SETTLE, "the old token refused")
    result = runner.invoke(args=["notifications", "disconnect", ""])
    assert result.exit_code != 0 and "invalid user id" in result.output


def test_metrics_count_disconnected_streams_and_revocations(server, second, publisher, token, user, clients):
    everywhere([server], token(user), clients)
    with publisher.app.app_context():
        notifications.disconnect(user)

    def counted() -> float:
        status, body = server.get("/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith("notifications_disconnected_streams_total "):
                return float(line.split()[1])
        return 0.0

    wait_until(lambda: counted() >= server.workers, SETTLE, "disconnected streams counted")


def test_presence_can_be_kept_without_the_cap(database_url, jwt_secret, publisher, token, user, tmp_path_factory):
    env = {"NOTIFICATIONS_MAX_STREAMS_PER_USER": "0", "NOTIFICATIONS_PRESENCE": "on"}
    with contextmanager(serving)("uncapped", database_url, jwt_secret, publisher, tmp_path_factory, env=env) as srv:
        c = srv.stream(token(user))
        try:
            c.wait_connected()
            wait_until(lambda: presence_of(srv, token(user), userId=user)["online"], SETTLE, "online")
        finally:
            c.close()
        wait_until(lambda: not presence_of(srv, token(user), userId=user)["online"], SETTLE, "offline")


@pytest.mark.parametrize(
    "settings",
    [{"NOTIFICATIONS_MAX_STREAMS_PER_USER": 0}, {"NOTIFICATIONS_PRESENCE": "off"}],
    ids=["no-cap", "off"],
)
def test_without_presence_the_route_says_how_to_turn_it_on(database_url, jwt_secret, token, settings):
    app = Publisher(database_url, jwt_secret, **settings).app
    answer = app.test_client().get(f"{PRESENCE}?userId=u1", headers={"Authorization": f"Bearer {token('u1')}"})
    assert answer.status_code == 404
    assert answer.json["code"] == 404 and "NOTIFICATIONS_PRESENCE=on" in answer.json["error"]
