"""Two gunicorn instances (standing in for two machines) sharing one PostgreSQL."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, wait_until_serving
from tests.support.tokens import mint

LIMIT_ENV = {"NOTIFICATIONS_MAX_STREAMS_PER_USER": "2"}


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return dict(LIMIT_ENV)


@pytest.fixture(scope="module")
def second(
    server: GunicornServer,
    database_url: str,
    jwt_secret: str,
    publisher: Publisher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornServer]:
    """Another instance on the same database, as on a second machine."""
    srv = GunicornServer(database_url, jwt_secret, tmp_path_factory.mktemp("second") / "gunicorn.log", env=LIMIT_ENV)
    try:
        srv.start()
        wait_until_serving(srv, publisher)
        yield srv
    finally:
        srv.stop()


def _publish_http(srv: GunicornServer, body: object) -> str:
    token = mint(srv.secret, "backend", notifications={"publish": ["*"]})
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/api/notifications/publish",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.status == 201, payload
        return str(payload["id"])
    finally:
        conn.close()


def test_an_event_published_through_either_instance_reaches_both(
    server: GunicornServer, second: GunicornServer
) -> None:
    a = server.stream(token=mint(server.secret, "viewer-a"))
    b = second.stream(token=mint(second.secret, "viewer-b"))
    try:
        a.wait_connected()
        b.wait_connected()
        via_first = _publish_http(server, {"event": "cross", "data": {"via": "first"}})
        via_second = _publish_http(second, {"event": "cross", "data": {"via": "second"}})
        for client in (a, b):
            assert client.wait_for_id(via_first).json() == {"via": "first"}
            assert client.wait_for_id(via_second).json() == {"via": "second"}
    finally:
        a.close()
        b.close()


def test_replay_works_on_the_other_instance(server: GunicornServer, second: GunicornServer) -> None:
    token = mint(server.secret, "mover")
    first = server.stream(token=token)
    try:
        first.wait_connected()
        seen = _publish_http(server, {"event": "move", "data": {"n": 0}, "userId": "mover"})
        first.wait_for_id(seen)
    finally:
        first.close()
    missed = [_publish_http(server, {"event": "move", "data": {"n": n}, "userId": "mover"}) for n in (1, 2)]
    with second.stream(token=token, headers={"Last-Event-ID": seen}) as again:
        for event_id in missed:
            again.wait_for_id(event_id)
        assert [m.id for m in again.events if m.event == "move"] == missed


def test_the_per_user_cap_holds_across_instances(server: GunicornServer, second: GunicornServer) -> None:
    token = mint(server.secret, "capped")
    one, two = server.stream(token=token), second.stream(token=token)
    try:
        one.wait_connected()
        two.wait_connected()
        for srv in (server, second):
            with srv.stream(token=token) as extra:
                refusal = extra.wait_for_event("error")
                assert refusal.json()["code"] == 429
                extra.wait_closed()
    finally:
        one.close()
        two.close()


def test_a_read_on_one_instance_reaches_the_users_stream_on_the_other(
    server: GunicornServer, second: GunicornServer, publisher: Publisher
) -> None:
    """The inbox's live sync across machines: read on one, the ``inbox`` event on the other."""
    user = "inbox-two-machines"
    token = mint(server.secret, user)
    there = second.stream(token=token)
    try:
        there.wait_connected()
        item = publisher.notify("on both machines", user_id=user, inbox=True)
        there.wait_for_id(item)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            conn.request(
                "POST",
                "/api/notifications/inbox/read",
                body=json.dumps({"ids": [str(item)]}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            unread = json.loads(resp.read())["unread"]
        finally:
            conn.close()
        msg = there.wait_for_event("inbox")
        assert msg.json() == {"type": "inbox", "action": "read", "ids": [str(item)], "unread": unread}
    finally:
        there.close()
