"""Stream tickets on the main server (default ``NOTIFICATIONS_TICKET_TTL`` 30 s): trade the real
token for a short-lived, single-use ticket, so the long-lived token stays out of stream URLs.
(The expired-ticket case runs on a 1-second-TTL server in test_expiry.py.)"""

from __future__ import annotations

import threading

import pytest

from tests.support.checks import assert_refused

from . import jwts
from .wire import TICKET, publish, request


def get_ticket(server, tok, headers=None):
    r = request(server, "POST", TICKET, b"", {"Authorization": f"Bearer {tok}", **(headers or {})})
    assert r.status == 201, (r.status, r.body)
    return r.json()


def test_ticket_answer_shape(server, token, user):
    r = request(server, "POST", TICKET, b"", {"Authorization": f"Bearer {token(user)}"})
    assert r.status == 201, r.body
    assert (r.header("Content-Type") or "").startswith("application/json")
    body = r.json()
    assert set(body) == {"ticket", "expiresIn"}, body
    assert isinstance(body["ticket"], str) and len(body["ticket"]) >= 32
    assert body["expiresIn"] == 30, body
    assert user not in body["ticket"] and token(user).split(".")[1] not in body["ticket"]


def test_ticket_opens_one_stream_once(server, open_stream, token, publisher, user):
    ticket = get_ticket(server, token(user))["ticket"]
    c = open_stream(params={"ticket": ticket})
    assert c.wait_headers() == 200
    c.wait_connected()
    assert c.wait_for_id(publisher.notify("via ticket", user_id=user)).json()["message"] == "via ticket"
    data = assert_refused(open_stream(params={"ticket": ticket}), 401)
    assert "ticket" in data["error"], data
    assert not c.closed, "a second use of the ticket ended the first stream"


def test_tickets_are_unique(server, token, user):
    tok = token(user)
    tickets = {get_ticket(server, tok)["ticket"] for _ in range(5)}
    assert len(tickets) == 5


def test_concurrent_redemptions_admit_exactly_one(server, open_stream, token, user):
    ticket = get_ticket(server, token(user))["ticket"]
    streams = []
    barrier = threading.Barrier(6)

    def go():
        barrier.wait()
        streams.append(open_stream(params={"ticket": ticket}))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    admitted = refused = 0
    for c in streams:
        c.wait_for(lambda m: m.is_event, what="first event", consume=False)
        first = c.events[0]
        if first.type == "error":
            assert first.json()["code"] == 401
            refused += 1
        else:
            admitted += 1
    assert (admitted, refused) == (1, 5), f"{admitted} streams admitted with one ticket"


def test_ticket_keeps_the_tokens_grants_and_only_those(server, open_stream, token, publisher, user):
    granted = get_ticket(server, token(user, notifications={"subscribe": ["orders"]}))["ticket"]
    c = open_stream(params={"ticket": granted, "channels": "orders"})
    c.wait_connected()
    c.wait_for_id(publisher.notify("order", channel="orders"))
    plain = get_ticket(server, token(user))["ticket"]
    data = assert_refused(open_stream(params={"ticket": plain, "channels": "orders"}), 403)
    assert data["channel"] == "orders"
    other = get_ticket(server, token(user))["ticket"]
    assert_refused(open_stream(params={"ticket": other, "userId": f"{user}-victim"}), 403)


def test_ticket_is_not_a_bearer_token(server, token, user):
    ticket = get_ticket(server, token(user, notifications={"publish": ["*"]}))["ticket"]
    r = publish(server, ticket, {"event": "x", "data": 1})
    assert r.status == 401, r.body
    r = request(server, "POST", TICKET, b"", {"Authorization": f"Bearer {ticket}"})
    assert r.status == 401, r.body


@pytest.mark.parametrize(
    "how",
    ["none", "query-token", "forged", "expired", "alg-none", "basic"],
)
def test_ticket_endpoint_needs_a_valid_header_token(server, token, jwt_secret, user, how):
    headers = {}
    path = TICKET
    if how == "query-token":
        path += f"?token={token(user)}"
    elif how == "forged":
        headers["Authorization"] = f"Bearer {jwts.tamper_payload(token(user), sub='admin')}"
    elif how == "expired":
        headers["Authorization"] = f"Bearer {token(user, ttl=-5)}"
    elif how == "alg-none":
        headers["Authorization"] = f"Bearer {jwts.unsigned(jwts.claims(user))}"
    elif how == "basic":
        headers["Authorization"] = f"Basic {token(user)}"
    r = request(server, "POST", path, b"", headers)
    assert r.status == 401, (r.status, r.body)
    assert r.json()["code"] == 401
    assert "ticket" not in r.json()


def test_ticket_endpoint_with_cookie_needs_the_csrf_header(server, token, user):
    """A cookie is sent by the browser on a cross-site POST too: without flask-jwt-extended's
    double-submit header, the cookie alone must not mint a ticket."""
    r = request(
        server,
        "POST",
        TICKET,
        b"",
        {"Cookie": f"access_token_cookie={token(user)}", "Origin": "https://evil.example.net"},
    )
    assert r.status == 401, (r.status, r.body)


def test_ticket_endpoint_is_post_only(server, token, user):
    r = request(server, "GET", TICKET, headers={"Authorization": f"Bearer {token(user)}"})
    assert r.status == 405


@pytest.mark.parametrize(
    "ticket",
    ["", "x" * 43, "x" * 129, "x" * 2000, "\x00", "ünï", "' OR '1'='1", "%00"],
    ids=["empty", "guess", "too-long", "huge", "nul", "unicode", "sql", "percent"],
)
def test_garbage_tickets_are_refused_401(open_stream, ticket):
    assert_refused(open_stream(params={"ticket": ticket}), 401)
