"""``POST /api/notifications/publish`` as a non-Python service uses it (README "Publishing",
"Over HTTP"; the grant a target needs is README "Grants"): what it answers, and what a real
stream then receives.

Malformed bodies and their status codes are in tests/security/test_bad_input.py, grant status
codes in tests/security/test_grants.py; this module checks delivery and storage: an accepted
event reaches the streams it targets, a refused one (a bad batch item, a missing grant) is not
stored at all.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from tests.support import pg
from tests.support.checks import assert_never_received, delivered_ids, post


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_MAX_PAYLOAD_BYTES": "1024"}


def stored_after(database_url: str, after: int) -> list[tuple[int, str]]:
    conn = psycopg2.connect(pg.libpq_url(database_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, event FROM notification_events WHERE id > %s ORDER BY id", (after,))
            return cur.fetchall()
    finally:
        conn.close()


def newest_stored(database_url: str) -> int:
    conn = psycopg2.connect(pg.libpq_url(database_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(id), 0) FROM notification_events")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def grant(subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"notifications": {"subscribe": list(subscribe), "publish": list(publish)}}


# ------------------------------------------------------------------ accepted


def test_single_event_answers_201_with_its_id_and_is_delivered(server, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    data = {"invoice": 17, "lines": [{"sku": "a", "qty": 2}], "note": "multi\nline \u00e9"}
    status, ctype, body = post(
        server, token("billing", **grant(publish=["user:*"])), {"event": "invoice.paid", "data": data, "userId": user}
    )
    assert status == 201, body
    assert ctype.startswith("application/json"), ctype
    assert set(body) == {"id"} and isinstance(body["id"], str) and body["id"].isdigit(), body
    msg = c.wait_for_id(body["id"])
    assert (msg.type, msg.json()) == ("invoice.paid", data)


def test_batch_answers_201_with_ids_and_every_event_is_delivered_in_order(server, open_stream, token, user):
    c = open_stream(token(user, **grant(subscribe=["orders"])), params={"channels": "orders"})
    c.wait_connected()
    batch = [
        {"event": "order.created", "data": {"id": 1}, "channel": "orders"},
        {
            "event": "notification",
            "data": {"type": "notification", "notificationType": "info", "message": "for you", "duration": 5000},
            "userId": user,
        },
        {"event": "presence", "data": 12},
        {"event": "order.updated", "data": {"id": 1, "status": "paid"}, "channel": "orders", "userId": user},
    ]
    status, _, body = post(server, token("svc", **grant(publish=["*"])), batch)
    assert status == 201, body
    assert set(body) == {"ids"} and len(body["ids"]) == len(batch), body
    ids = [int(i) for i in body["ids"]]
    assert all(isinstance(i, str) for i in body["ids"]) and ids == sorted(set(ids)), body
    c.wait_for_id(ids[-1])
    assert delivered_ids(c) == ids
    got = [(m.type, m.json()) for m in c.events if m.id in body["ids"]]
    assert got == [(item["event"], item["data"]) for item in batch]


def test_an_array_of_one_answers_ids(server, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    status, _, body = post(server, token("svc", **grant(publish=["*"])), [{"event": "one", "data": [1]}])
    assert status == 201 and set(body) == {"ids"} and len(body["ids"]) == 1, body
    assert c.wait_for_id(body["ids"][0]).json() == [1]


# ------------------------------------------------------------------ all or nothing


BAD_ITEMS = {
    "event-name": ({"event": "bad name", "data": 1}, 422),
    "nul": ({"event": "x", "data": {"k": "nul\u0000"}}, 422),
    "channel": ({"event": "x", "data": 1, "channel": "no spaces"}, 422),
    "reserved": ({"event": "reset", "data": {}}, 422),
    "too-large": ({"event": "x", "data": "d" * 2000}, 413),
    # an invalid channel whose name reads like the size error is still a 422, not a 413
    "channel-named-like-the-limit": ({"event": "x", "data": 1, "channel": "a-byte limit"}, 422),
}


def bad_batch(user: str, bad: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"event": "first", "data": 1, "userId": user},
        {"event": "second", "data": 2},
        bad,
        {"event": "last", "data": 3, "userId": user},
    ]


@pytest.mark.parametrize(("bad", "code"), list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_batch_with_one_invalid_item_stores_and_delivers_none(
    server, database_url, publisher, open_stream, token, user, bad, code
):
    c = open_stream(token(user))
    c.wait_connected()
    before = newest_stored(database_url)
    status, _, body = post(server, token("svc", **grant(publish=["*"])), bad_batch(user, bad))
    assert status == code, body
    assert body["code"] == code and body["error"], body
    assert stored_after(database_url, before) == [], "a refused batch stored events"
    marker = publisher.publish("marker", {}, user_id=user)
    assert_never_received(c, marker, range(before + 1, marker))
    assert [m.type for m in c.events if m.type in ("first", "second", "last")] == []


@pytest.mark.parametrize(("bad", "code"), list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_batch_error_names_the_item(server, token, user, bad, code):
    """README, Over HTTP: "422 (not a valid event: the message names the item and the problem)"."""
    status, _, body = post(server, token("svc", **grant(publish=["*"])), bad_batch(user, bad))
    assert status == code, body
    assert "item 2" in body["error"], f"the error does not say which item is wrong: {body}"


# ------------------------------------------------------------------ grants, seen by streams and the table


def test_channel_grant_publishes_to_its_channel_only(server, database_url, publisher, open_stream, token, user):
    sub = open_stream(token(user, **grant(subscribe=["orders"])), params={"channels": "orders"})
    sub.wait_connected()
    tok = token("orders-service", **grant(publish=["orders"]))
    status, _, body = post(server, tok, {"event": "order.shipped", "data": {"id": 3}, "channel": "orders"})
    assert status == 201, body
    assert sub.wait_for_id(body["id"]).json() == {"id": 3}

    before = newest_stored(database_url)
    for target in ({}, {"userId": user}, {"channel": "billing"}):
        status, _, refused = post(server, tok, {"event": "sneaky", "data": 0, **target})
        assert status == 403, (target, refused)
        assert refused["code"] == 403 and refused["error"], refused
    assert stored_after(database_url, before) == [], "a refused publish stored an event"
    marker = publisher.publish("marker", {}, user_id=user)
    assert_never_received(sub, marker, range(before + 1, marker))
    assert not [m for m in sub.events if m.type == "sneaky"]


def test_user_wildcard_grant_targets_users(server, database_url, publisher, open_stream, token, user):
    target = open_stream(token(user), name="target")
    other = open_stream(token(f"{user}-other"), name="other")
    target.wait_connected()
    other.wait_connected()
    tok = token("mailer", **grant(publish=["user:*"]))
    status, _, body = post(server, tok, {"event": "mail.received", "data": {"from": "a@b"}, "userId": user})
    assert status == 201, body
    assert target.wait_for_id(body["id"]).json() == {"from": "a@b"}

    before = newest_stored(database_url)
    for refused_target in ({}, {"channel": "orders"}):
        status, _, refused = post(server, tok, {"event": "sneaky", "data": 0, **refused_target})
        assert status == 403, (refused_target, refused)
    assert stored_after(database_url, before) == []
    marker = publisher.publish("marker", {})  # a broadcast: both streams get it
    assert_never_received(other, marker, [int(body["id"])])
    assert_never_received(target, marker, range(before + 1, marker))
