"""The verified-token cache (``NOTIFICATIONS_TOKEN_CACHE``): a ``?token=`` or publishing ``Bearer``
token verified once by a worker is not verified again until its ``exp``, yet an expired token is
refused on reconnect or publish, and an app with a flask-jwt-extended blocklist gets no cache at
all, so a revoked token is refused at once.

* ``server``: the standard service (cache on, its default size).
* ``blocklist_server``: ``tests.support.blocklist_app`` (a ``token_in_blocklist_loader``).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.checks import assert_refused, delivered_ids, post
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, serving
from tests.support.sse_client import SSEClient


@pytest.fixture(scope="module")
def revoked_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blocklist") / "revoked-jtis"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def blocklist_server(
    database_url: str,
    jwt_secret: str,
    publisher: Publisher,
    revoked_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornServer]:
    env = {"REVOKED_JTIS_FILE": str(revoked_file)}
    yield from serving(
        "blocklist-app",
        database_url,
        jwt_secret,
        publisher,
        tmp_path_factory,
        env=env,
        app="tests.support.blocklist_app:app",
    )


def on_every_worker(srv: GunicornServer, token: str, clients: list[SSEClient]) -> list[SSEClient]:
    """Connect with ``token`` until every worker holds a connected stream of it (so every worker
    has verified it, and would have remembered it)."""
    opened, _ = srv.open_on_all_workers(lambda i: srv.stream(token, name=f"warm-{i}"), minimum=srv.workers)
    clients.extend(opened)
    for c in opened:
        c.wait_connected()
    return opened


def test_reconnecting_many_times_with_one_token_keeps_working(
    server: GunicornServer, token: Callable[..., str], user: str, publisher: Publisher
) -> None:
    """Ten reconnects with the same token: each is admitted, replays exactly the event published
    while it was away (``Last-Event-ID``) and then receives a live one."""
    tok = token(user)
    last = publisher.notify("start", user_id=user)
    for i in range(10):
        away = publisher.notify(f"while away {i}", user_id=user)
        with server.stream(tok, headers={"Last-Event-ID": str(last)}, name=f"reconnect-{i}") as c:
            assert c.wait_headers() == 200
            c.wait_connected()
            live = publisher.notify(f"live {i}", user_id=user)
            c.wait_for_id(live)
            got = delivered_ids(c, after=last)
            assert got == [away, live], f"reconnect {i}: got {got}, expected {[away, live]}\n{c.raw!r}"
            last = live


def test_a_cached_token_is_refused_once_past_its_exp(
    server: GunicornServer, token: Callable[..., str], user: str, clients: list[SSEClient]
) -> None:
    """A token every worker has verified (and cached) is refused with 401 on reconnect once its
    ``exp`` has passed: the cache does not outlive the token."""
    exp = math.ceil(time.time()) + 3
    tok = token(user, ttl=exp - int(time.time()))
    warm = on_every_worker(server, tok, clients)
    for c in warm:  # each open stream is ended with a 401 at exp: the wait's condition
        error = c.wait_for_event("error", timeout=8)
        assert error.json()["code"] == 401, error.raw
    assert time.time() >= exp
    for i in range(4):
        with server.stream(tok, name=f"after-exp-{i}") as c:
            data = assert_refused(c, 401)
            assert "expired" in data["error"], data
            assert not [m for m in c.messages if m.type == "notification"], c.raw


def test_a_revoked_token_is_refused_on_reconnect_in_an_app_with_a_blocklist(
    blocklist_server: GunicornServer,
    token: Callable[..., str],
    user: str,
    publisher: Publisher,
    revoked_file: Path,
    clients: list[SSEClient],
) -> None:
    """With a ``token_in_blocklist_loader`` the cache is off: a token that every worker has already
    admitted is refused (401) on reconnect as soon as its ``jti`` is revoked, while another token of
    the same user still connects."""
    jti = secrets.token_hex(8)
    tok = token(user, jti=jti)
    other = token(user, jti=secrets.token_hex(8))
    warm = on_every_worker(blocklist_server, tok, clients)
    event_id = publisher.notify("before revocation", user_id=user)
    for c in warm:
        c.wait_for_id(event_id)
    for c in warm:
        c.close()

    revoked_file.write_text(jti + "\n")
    for i in range(4):
        with blocklist_server.stream(tok, name=f"revoked-{i}") as c:
            assert_refused(c, 401)
    with blocklist_server.stream(other, name="not-revoked") as c:
        c.wait_connected()
        c.wait_for_id(publisher.notify("after revocation", user_id=user))


def publish_on_every_worker(srv: GunicornServer, bearer: str, user: str) -> None:
    """Publish with ``bearer`` over many new connections, so every worker has accepted it (and
    would have remembered the token)."""
    for _ in range(20 * srv.workers):  # each a new connection: the workers share them out
        status, _, body = post(srv, bearer, {"event": "warm", "data": {}, "userId": user})
        assert status == 201, body


def test_a_cached_publishing_token_is_refused_once_past_its_exp(
    server: GunicornServer, token: Callable[..., str], user: str, clients: list[SSEClient]
) -> None:
    """A publishing token the workers have accepted (and cached) is refused with 401 once its
    ``exp`` has passed: the cache does not outlive the token."""
    exp = math.ceil(time.time()) + 3
    bearer = token("publisher", ttl=exp - int(time.time()), notifications={"publish": ["*"]})
    publish_on_every_worker(server, bearer, user)
    # A stream whose token has the same exp is ended with a 401 at exp: the wait's condition.
    clock = server.stream(token(user, ttl=exp - int(time.time())), name="clock")
    clients.append(clock)
    assert clock.wait_for_event("error", timeout=8).json()["code"] == 401
    assert time.time() >= exp
    for i in range(4):
        status, _, body = post(server, bearer, {"event": "late", "data": {"i": i}, "userId": user})
        assert status == 401 and "expired" in body["error"], (status, body)


def test_a_revoked_publishing_token_is_refused_in_an_app_with_a_blocklist(
    blocklist_server: GunicornServer, token: Callable[..., str], user: str, revoked_file: Path
) -> None:
    """With a ``token_in_blocklist_loader`` the cache is off for publishing too: a token every
    worker has accepted is refused (401) as soon as its ``jti`` is revoked."""
    jti = secrets.token_hex(8)
    bearer = token("publisher", jti=jti, notifications={"publish": ["*"]})
    publish_on_every_worker(blocklist_server, bearer, user)
    revoked_file.write_text(jti + "\n")
    for i in range(4):
        status, _, body = post(blocklist_server, bearer, {"event": "revoked", "data": {"i": i}, "userId": user})
        assert status == 401, (status, body)
