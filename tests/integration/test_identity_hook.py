"""A host app's own login session authenticates the stream (``Notifications(app, identity=...)``)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, wait_until_serving
from tests.support.tokens import mint


@pytest.fixture(scope="module")
def session_server(
    database_url: str, jwt_secret: str, publisher: Publisher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    log = tmp_path_factory.mktemp("session-app") / "gunicorn.log"
    srv = GunicornServer(database_url, jwt_secret, log, app="tests.support.session_app:app")
    try:
        srv.start()
        wait_until_serving(srv, publisher)
        yield srv
    finally:
        srv.stop()


def login(srv: GunicornServer, user: str) -> str:
    """Log in through the host app; return its session cookie."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/login",
            body=urlencode({"user": user}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        cookie = resp.getheader("Set-Cookie") or ""
        assert cookie.startswith("session="), cookie
        return cookie.split(";", 1)[0]
    finally:
        conn.close()


def test_a_logged_in_session_streams_its_own_events_without_a_token(
    session_server: GunicornServer, publisher: Publisher
) -> None:
    cookie = login(session_server, "ada")
    with session_server.stream(headers={"Cookie": cookie}) as ada:
        ada.wait_connected()
        for_bob = publisher.publish("private", {"to": "bob"}, user_id="bob")
        for_ada = publisher.publish("private", {"to": "ada"}, user_id="ada")
        assert ada.wait_for_id(for_ada).json() == {"to": "ada"}
        assert for_bob not in [m.int_id for m in ada.events]


def test_the_session_wins_over_a_token_and_without_either_the_stream_is_refused(
    session_server: GunicornServer, publisher: Publisher
) -> None:
    cookie = login(session_server, "cy")
    with session_server.stream(token=mint(session_server.secret, "dan"), headers={"Cookie": cookie}) as both:
        both.wait_connected()
        event_id = publisher.publish("private", {"to": "cy"}, user_id="cy")
        assert both.wait_for_id(event_id).json() == {"to": "cy"}
    with session_server.stream() as anonymous:
        refusal = anonymous.wait_for_event("error")
        assert refusal.json()["code"] == 401
        anonymous.wait_closed()
    with session_server.stream(token=mint(session_server.secret, "dan")) as with_token:
        with_token.wait_connected()  # no session: the JWT still works
