"""The inbox (DESIGN §7, README "The inbox"), as a user sees it: what the routes answer, what the
streams receive, on a real PostgreSQL and the module's gunicorn (2 gevent workers).

Notifications are published from the pytest process (``publisher``, the public API); the routes
are called over HTTP; the live ``inbox`` events are read by real SSE clients.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine

from notifications import inbox
from tests.support.checks import post, wait_until
from tests.support.pg import query
from tests.support.publisher import Publisher, api
from tests.support.server import GunicornServer, wait_until_serving

INBOX = "/api/notifications/inbox"
# past NOTIFICATIONS_INBOX_RETENTION (its default, 90d): every item up to an id
AGE_UP_TO = "UPDATE notification_events_inbox SET created_at = now() - interval '91 days' WHERE event_id <= %s"


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": "lobby"}


def call(
    server: GunicornServer,
    method: str,
    path: str,
    bearer: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One request; the status and the JSON body."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=15)
    sent = dict(headers or {})
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        payload = resp.read()
        assert (resp.getheader("Content-Type") or "").startswith("application/json"), (resp.status, payload)
        return resp.status, json.loads(payload)
    finally:
        conn.close()


def listing(server: GunicornServer, bearer: str, query_string: str = "") -> dict[str, Any]:
    status, body = call(server, "GET", f"{INBOX}?{query_string}", bearer)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def ids_of(page: dict[str, Any]) -> list[int]:
    return [int(item["id"]) for item in page["items"]]


def change(server: GunicornServer, bearer: str, action: str, body: Any, query_string: str = "") -> int:
    status, answer = call(server, "POST", f"{INBOX}/{action}?{query_string}", bearer, body)
    assert status == 200, answer
    assert set(answer) == {"unread"}, answer
    return int(answer["unread"])


def boxed(publisher: Publisher, message: str, **kwargs: Any) -> int:
    """An inbox notification, once the server's sequencer has delivered it (milliseconds)."""
    event_id = publisher.notify(message, inbox=True, **kwargs)
    publisher.stored([event_id])
    return event_id


def clean_slate(server: GunicornServer, bearer: str) -> None:
    """Dismiss what the user's inbox holds already (broadcasts of the tests before)."""
    while ids := ids_of(listing(server, bearer, "limit=100")):
        change(server, bearer, "dismiss", {"ids": [str(i) for i in ids]})


def grant(subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"notifications": {"subscribe": list(subscribe), "publish": list(publish)}}


def assert_error(status: int, body: Any, code: int) -> None:
    assert status == code, (status, body)
    assert body["code"] == code and isinstance(body["error"], str) and body["error"], body


# ------------------------------------------------------------------ what goes in


def test_an_inbox_notification_is_streamed_with_inbox_true_and_listed(server, publisher, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    toast = publisher.notify("only a toast", user_id=user)
    kept = boxed(publisher, "Invoice paid", title="Billing", notification_type="success", user_id=user)
    msg = c.wait_for_id(kept)
    assert msg.type == "notification"
    expected = {
        "type": "notification",
        "notificationType": "success",
        "title": "Billing",
        "message": "Invoice paid",
        "duration": 5000,
        "inbox": True,
    }
    assert msg.json() == expected
    assert "inbox" not in next(m for m in c.messages if m.id == str(toast)).json()

    page = listing(server, token(user))
    assert set(page) == {"items", "unread", "next"}
    assert page["unread"] == 1 and page["next"] is None
    [item] = page["items"]
    assert set(item) == {"id", "event", "data", "createdAt", "read"}
    assert (item["id"], item["event"], item["data"], item["read"]) == (str(kept), "notification", expected, False)
    assert item["createdAt"].endswith("Z") and item["createdAt"][:4].isdigit() and "T" in item["createdAt"]
    status, count = call(server, "GET", f"{INBOX}/count", token(user))
    assert (status, count) == (200, {"unread": 1})


def test_http_publish_takes_inbox_true_alone_and_in_arrays(server, publisher, token, user):
    bearer = token("svc", **grant(publish=[f"user:{user}"]))
    note = {"type": "notification", "notificationType": "info", "message": "from HTTP", "duration": 0}
    status, _, body = post(server, bearer, {"event": "notification", "data": note, "userId": user, "inbox": True})
    assert status == 201, body
    status, _, batch = post(
        server,
        bearer,
        [
            {"event": "notification", "data": {**note, "message": "in a batch"}, "userId": user, "inbox": True},
            {"event": "notification", "data": {**note, "message": "a toast"}, "userId": user},
        ],
    )
    assert status == 201, batch
    publisher.stored([int(body["id"]), *(int(i) for i in batch["ids"])])
    page = listing(server, token(user))
    assert ids_of(page) == [int(batch["ids"][0]), int(body["id"])]
    assert [i["data"]["message"] for i in page["items"]] == ["in a batch", "from HTTP"]
    # refused, nothing stored: not a notification, a non-boolean flag, the reserved name
    for item, code in [
        ({"event": "order", "data": {"message": "x"}, "userId": user, "inbox": True}, 422),
        ({"event": "notification", "data": note, "userId": user, "inbox": "yes"}, 422),
        ({"event": "notification", "data": "just text", "userId": user, "inbox": True}, 422),
        ({"event": "inbox", "data": {"type": "inbox", "unread": 0}, "userId": user}, 422),
        ([{"event": "notification", "data": note, "userId": user, "inbox": True}, {"event": "x", "dat": 1}], 422),
    ]:
        status, _, answer = post(server, bearer, item)
        assert status == code, (item, answer)
    assert ids_of(listing(server, token(user))) == ids_of(page)


def test_stored_if_and_only_if_the_app_transaction_commits(server, database_url, publisher, token, user):
    engine = create_engine(database_url)
    try:
        with publisher.app.app_context():
            with engine.begin() as conn:
                committed = int(api("notify")("kept", user_id=user, inbox=True, connection=conn))
                assert ids_of(listing(server, token(user))) == [], "visible before the commit"
            with pytest.raises(RuntimeError):
                with engine.begin() as conn:
                    api("notify")("rolled back", user_id=user, inbox=True, connection=conn)
                    raise RuntimeError("the app fails")
    finally:
        engine.dispose()
    # delivered once the sequencer moves it (with ``committed`` as its id, or a higher one if the
    # transaction committed more than the sequencer's grace after publishing)
    page = wait_until(lambda: (lambda p: p if p["items"] else None)(listing(server, token(user))), 5, "kept")
    assert [i["data"]["message"] for i in page["items"]] == ["kept"] and page["unread"] == 1
    assert ids_of(page)[0] >= committed


# ------------------------------------------------------------------ who sees what


def test_broadcast_channel_and_user_visibility_and_a_broadcast_is_stored_once(
    server, database_url, publisher, token, user
):
    other = user + "-other"
    everyone = boxed(publisher, "for everyone")
    team = boxed(publisher, "for the team", channel="team")
    lobby = boxed(publisher, "for the lobby", channel="lobby")
    mine = boxed(publisher, "for me", user_id=user)
    mine_in_team = boxed(publisher, "for me in the team", user_id=user, channel="team")
    theirs = boxed(publisher, "for the other", user_id=other)
    rows = query(database_url, "SELECT count(*) FROM notification_events_inbox WHERE event_id = %s", everyone)
    assert rows == [(1,)], "a broadcast is one row, not one per user"

    def seen(sub: str, q: str = "", **claims: Any) -> list[int]:
        return [i for i in ids_of(listing(server, token(sub, **claims), q + "&limit=100")) if i >= everyone]

    assert seen(user) == [mine, everyone]
    assert seen(other) == [theirs, everyone]
    assert seen(user, "channels=lobby") == [mine, lobby, everyone]  # a public channel
    team_reader = grant(subscribe=("team",))
    assert seen(user, "channels=team,lobby", **team_reader) == [mine_in_team, mine, lobby, team, everyone]
    assert seen(other, "channels=team", **team_reader) == [theirs, team, everyone]
    # a support agent granted user:<id> reads that user's inbox, not their own
    agent = grant(subscribe=(f"user:{user}",))
    assert seen("agent-" + user, f"userId={user}", **agent) == [mine, everyone]


def test_another_users_inbox_or_an_unreadable_channel_is_403(server, publisher, token, user):
    other = user + "-other"
    secret = boxed(publisher, "not yours", user_id=other)
    untouched = listing(server, token(other))
    for method, path, body in [
        ("GET", f"{INBOX}?userId={other}", None),
        ("GET", f"{INBOX}/count?userId={other}", None),
        ("POST", f"{INBOX}/read?userId={other}", {"ids": [str(secret)]}),
        ("POST", f"{INBOX}/read?userId={other}", {"all": True}),
        ("POST", f"{INBOX}/unread?userId={other}", {"ids": [str(secret)]}),
        ("POST", f"{INBOX}/dismiss?userId={other}", {"ids": [str(secret)]}),
        ("GET", f"{INBOX}?channels=team", None),
        ("GET", f"{INBOX}/count?channels=lobby,team", None),
        ("POST", f"{INBOX}/read?channels=team", {"all": True}),
    ]:
        status, answer = call(server, method, path, token(user), body)
        assert_error(status, answer, 403)
    # the grant of another user's events is not the grant of a third one
    status, answer = call(server, "GET", f"{INBOX}?userId={other}x", token(user, **grant(subscribe=(f"user:{other}",))))
    assert_error(status, answer, 403)
    page = listing(server, token(other))
    assert page["items"][0]["id"] == str(secret) and page["items"][0]["read"] is False
    assert page == untouched


@pytest.mark.parametrize("how", ["none", "garbage", "expired", "wrong-key", "query-string", "basic"])
def test_no_or_bad_token_is_401(server, token, user, how):
    headers: dict[str, str] = {}
    path = INBOX
    if how == "garbage":
        headers["Authorization"] = "Bearer not-a-jwt"
    elif how == "expired":
        headers["Authorization"] = f"Bearer {token(user, ttl=-60)}"
    elif how == "wrong-key":
        from tests.support.tokens import mint

        headers["Authorization"] = f"Bearer {mint('another-secret-entirely-another-one', user)}"
    elif how == "query-string":
        path = f"{INBOX}?token={token(user)}"  # never from the URL: it would end up in logs
    elif how == "basic":
        headers["Authorization"] = f"Basic {token(user)}"
    for method, suffix, body in [("GET", "", None), ("GET", "/count", None), ("POST", "/read", {"all": True})]:
        where = path.replace(INBOX, INBOX + suffix, 1)
        status, answer = call(server, method, where, headers=headers, body=body)
        assert_error(status, answer, 401)


# ------------------------------------------------------------------ paging


def test_paging_newest_first_with_before_and_next(server, publisher, token, user):
    bearer = token(user)
    clean_slate(server, bearer)
    made = [boxed(publisher, f"n{i}", user_id=user) for i in range(45)]
    first = listing(server, bearer)
    assert ids_of(first) == made[::-1][:20] and first["next"] == str(made[25])
    second = listing(server, bearer, f"before={first['next']}")
    assert ids_of(second) == made[::-1][20:40] and second["next"] == str(made[5])
    third = listing(server, bearer, f"before={second['next']}")
    assert ids_of(third) == made[::-1][40:] and third["next"] is None
    assert first["unread"] == second["unread"] == third["unread"] == 45
    assert ids_of(listing(server, bearer, "limit=100")) == made[::-1]
    assert ids_of(listing(server, bearer, "limit=1")) == [made[-1]]
    exact = listing(server, bearer, f"limit=5&before={made[5]}")
    assert ids_of(exact) == made[:5][::-1] and exact["next"] is None  # the last page, exactly full

    # unread=1: only unread ones, paged the same way
    change(server, bearer, "read", {"ids": [str(i) for i in made[40:]]})  # the newest five
    change(server, bearer, "read", {"upTo": str(made[9])})  # the oldest ten
    change(server, bearer, "unread", {"ids": [str(made[0])]})  # one of them unread again
    unread = listing(server, bearer, "unread=1&limit=20")
    assert ids_of(unread) == made[10:40][::-1][:20] and unread["next"] == str(made[20])
    rest = listing(server, bearer, f"unread=1&limit=20&before={unread['next']}")
    assert ids_of(rest) == made[10:20][::-1] + [made[0]] and rest["next"] is None
    assert all(item["read"] is False for item in unread["items"] + rest["items"])
    assert unread["unread"] == 31
    everything = listing(server, bearer, "limit=100&unread=0")
    assert {int(i["id"]): i["read"] for i in everything["items"]} == {
        m: not (m == made[0] or made[10] <= m <= made[39]) for m in made
    }


@pytest.mark.parametrize(
    "query_string",
    [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "before=abc",
        "before=0",
        "before=-5",
        "before=",
        "before=99999999999999999999",
        "before=1e3",
        "unread=maybe",
        "channels=bad%20name",
        "userId=",
    ],
)
def test_bad_limit_before_and_parameters_are_400(server, token, user, query_string):
    status, answer = call(server, "GET", f"{INBOX}?{query_string}", token(user))
    assert_error(status, answer, 400)


# ------------------------------------------------------------------ read state


def test_read_ids_up_to_all_unread_and_dismiss(server, publisher, token, user):
    bearer = token(user)
    clean_slate(server, bearer)
    a, b, c, d = (boxed(publisher, f"item {n}", user_id=user) for n in "abcd")
    everyone = boxed(publisher, "for everyone")
    base = listing(server, bearer, "limit=100")["unread"]
    assert base == 5
    assert change(server, bearer, "read", {"ids": [str(a), str(c)]}) == base - 2
    page = {int(i["id"]): i["read"] for i in listing(server, bearer, "limit=100")["items"]}
    assert (page[a], page[b], page[c], page[d], page[everyone]) == (True, False, True, False, False)
    assert change(server, bearer, "unread", {"ids": [str(a)]}) == base - 1
    assert change(server, bearer, "read", {"upTo": str(c)}) == base - 3  # a, b and c (and older ones)
    assert change(server, bearer, "read", {"all": True}) == 0
    assert change(server, bearer, "unread", {"ids": [str(b), str(everyone)]}) == 2
    assert change(server, bearer, "dismiss", {"ids": [str(b)]}) == 1  # gone from the count...
    page = listing(server, bearer, "limit=100")
    assert b not in ids_of(page) and everyone in ids_of(page)  # ...and from the list
    assert page["unread"] == 1
    # dismissing is for this user only: another user still has the broadcast
    other = token(user + "-other")
    assert change(server, bearer, "dismiss", {"ids": [str(everyone)]}) == 0
    assert everyone in ids_of(listing(server, other, "limit=100"))
    # a dismissed item can not be marked again (it is not in the inbox any more)
    assert change(server, bearer, "unread", {"ids": [str(b), str(everyone)]}) == 0
    # items published after "all" arrive unread
    e = boxed(publisher, "after all", user_id=user)
    page = listing(server, bearer)
    assert page["items"][0]["id"] == str(e) and page["items"][0]["read"] is False and page["unread"] == 1


def test_unknown_and_other_users_ids_are_ignored(server, publisher, token, user):
    other = user + "-other"
    theirs = boxed(publisher, "theirs", user_id=other)
    mine = boxed(publisher, "mine", user_id=user)
    team = boxed(publisher, "team only", channel="team")
    bearer = token(user)
    before = listing(server, bearer)["unread"]
    assert before >= 1
    ignored = [str(theirs), str(team), "999999999999", "1"]  # another user's, unrequested channel, unknown
    assert change(server, bearer, "read", {"ids": ignored + [str(mine)]}) == before - 1
    assert change(server, bearer, "dismiss", {"ids": ignored}) == before - 1
    assert change(server, bearer, "read", {"upTo": "999999999999999"}) == 0  # beyond the newest: up to it
    newest = listing(server, token(other))["items"][0]
    assert (newest["id"], newest["read"]) == (str(theirs), False)
    # marking "up to" a huge id did not mark future notifications read
    later = boxed(publisher, "later", user_id=user)
    newest = listing(server, bearer)["items"][0]
    assert (newest["id"], newest["read"]) == (str(later), False)


BAD_BODIES = [
    ("read", {"ids": ["abc"]}),
    ("read", {"ids": [5]}),
    ("read", {"ids": ["-1"]}),
    ("read", {"ids": ["1.5"]}),
    ("read", {"ids": [""]}),
    ("read", {"ids": ["0"]}),
    ("read", {"ids": [" 1"]}),
    ("read", {"ids": ["99999999999999999999"]}),
    ("read", {"ids": [None]}),
    ("read", {"ids": "1"}),
    ("read", {"ids": {"1": True}}),
    ("read", {"upTo": 5}),
    ("read", {"upTo": "x"}),
    ("read", {"all": False}),
    ("read", {"all": "true"}),
    ("read", {"ids": ["1"], "all": True}),
    ("read", {"ids": ["1"], "extra": 1}),
    ("read", {}),
    ("read", []),
    ("read", ["1"]),
    ("read", "all"),
    ("read", None),
    ("unread", {"all": True}),
    ("unread", {"upTo": "1"}),
    ("dismiss", {"upTo": "1"}),
    ("dismiss", {"ids": ["x"]}),
    ("read", {"ids": [str(i) for i in range(1, 1002)]}),
    ("dismiss", {"ids": [str(i) for i in range(1, 1002)]}),
]


@pytest.mark.parametrize(("action", "body"), BAD_BODIES)
def test_malformed_bodies_are_400_and_nothing_is_applied(server, publisher, token, user, action, body):
    mine = boxed(publisher, "untouched", user_id=user)
    bearer = token(user)
    before = listing(server, bearer)
    if isinstance(body, dict) and isinstance(body.get("ids"), list) and len(body["ids"]) < 1000:
        body = {**body, "ids": [str(mine), *body["ids"]]}  # a valid id beside the bad one
    status, answer = call(server, "POST", f"{INBOX}/{action}", bearer, body)
    assert_error(status, answer, 400)
    assert listing(server, bearer) == before, "a refused request changed something"


def test_not_json_is_400_and_1000_ids_are_fine(server, publisher, token, user):
    bearer = token(user)
    for raw, ctype in [(b"{nope", "application/json"), (b'{"all": true}', "text/plain"), (b"", "application/json")]:
        status, answer = call(server, "POST", f"{INBOX}/read", bearer, raw=raw, headers={"Content-Type": ctype})
        assert_error(status, answer, 400)
    mine = boxed(publisher, "one of a thousand", user_id=user)
    ids = [str(mine)] + [str(10**12 + i) for i in range(999)]
    assert change(server, bearer, "read", {"ids": ids}) == listing(server, bearer)["unread"]
    newest = listing(server, bearer)["items"][0]
    assert (newest["id"], newest["read"]) == (str(mine), True)


# ------------------------------------------------------------------ live sync


def test_the_inbox_event_reaches_every_stream_of_the_user_on_both_workers(server, publisher, open_stream, token, user):
    mine, per_worker = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"tab{i}"), minimum=2)
    assert len(per_worker) == 2
    other = open_stream(token(user + "-other"), name="other")
    for c in [*mine, other]:
        c.wait_connected()
    a, b = boxed(publisher, "a", user_id=user), boxed(publisher, "b", user_id=user)
    bearer = token(user)
    expected_unread = listing(server, bearer)["unread"] - 1
    assert change(server, bearer, "read", {"ids": [str(a), "424242424242"]}) == expected_unread
    for c in mine:
        c.wait_for_id(b)
        msg = c.wait_for_event("inbox", action="read")
        assert msg.json() == {"type": "inbox", "action": "read", "ids": [str(a)], "unread": expected_unread}
        assert msg.id is not None and int(msg.id) > b
    change(server, bearer, "read", {"all": True})
    change(server, bearer, "unread", {"ids": [str(b)]})
    change(server, bearer, "dismiss", {"ids": [str(b)]})
    change(server, bearer, "read", {"upTo": str(a)})
    for c in mine:
        assert c.wait_for_event("inbox", action="read").json() == {
            "type": "inbox",
            "action": "read",
            "all": True,
            "unread": 0,
        }
        assert c.wait_for_event("inbox", action="unread").json()["ids"] == [str(b)]
        assert c.wait_for_event("inbox", action="dismiss").json() == {
            "type": "inbox",
            "action": "dismiss",
            "ids": [str(b)],
            "unread": 0,
        }
        assert c.wait_for_event("inbox", action="read").json()["upTo"] == str(a)
    sentinel = publisher.notify("sentinel")
    other.wait_for_id(sentinel)
    assert not [m for m in other.messages if m.type == "inbox"], "another user received this user's inbox events"


def test_the_inbox_event_is_stored_and_replayed_by_last_event_id(server, publisher, open_stream, token, user):
    item = boxed(publisher, "replay me", user_id=user)
    bearer = token(user)
    change(server, bearer, "read", {"ids": [str(item)]})
    c = open_stream(token(user), headers={"Last-Event-ID": str(item)})
    msg = c.wait_for_event("inbox")
    assert msg.json() == {"type": "inbox", "action": "read", "ids": [str(item)], "unread": msg.json()["unread"]}
    assert int(msg.id) > item


def test_the_python_api_changes_publish_the_same_event(server, publisher, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    item = boxed(publisher, "from python", user_id=user)
    with publisher.app.app_context():
        assert inbox.unread_count(user) == listing(server, token(user))["unread"]
        page = inbox.list(user, limit=1)
        assert [i.id for i in page.items] == [str(item)] and page.items[0].data["message"] == "from python"
        count = inbox.mark_read(user, [item])
        assert count == inbox.unread_count(user)
        assert inbox.mark_unread(user, [str(item)]) == count + 1
        assert inbox.dismiss(user, [item]) == count
        assert inbox.mark_read(user, all=True) == 0
        for bad in [
            lambda: inbox.mark_read(user),
            lambda: inbox.mark_read(user, [item], all=True),
            lambda: inbox.mark_read(user, ["x"]),
            lambda: inbox.list(user, limit=0),
            lambda: inbox.list(user, before="abc"),
            lambda: inbox.unread_count(""),
            lambda: inbox.list(user, channels=["bad name"]),
        ]:
            with pytest.raises(ValueError):
                bad()
    actions = [c.wait_for_event("inbox").json()["action"] for _ in range(4)]
    assert actions == ["read", "unread", "dismiss", "read"]


def test_concurrent_mark_read_from_two_tabs_ends_in_the_same_state(server, publisher, token, user):
    items = [boxed(publisher, f"c{i}", user_id=user) for i in range(30)]
    bearer = token(user)
    results: list[Any] = []
    bodies = [{"ids": [str(i) for i in items]}, {"ids": [str(i) for i in reversed(items)]}, {"upTo": str(items[-1])}]
    barrier = threading.Barrier(len(bodies) * 2)

    def tab(body: Any) -> None:
        barrier.wait(10)
        results.append(call(server, "POST", f"{INBOX}/read", bearer, body))

    threads = [threading.Thread(target=tab, args=(b,)) for b in bodies * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [status for status, _ in results] == [200] * len(threads), results
    page = listing(server, bearer, "limit=100")
    assert all(item["read"] for item in page["items"] if int(item["id"]) in items)
    assert page["unread"] == len([i for i in page["items"] if not i["read"]])


# ------------------------------------------------------------------ retention, cookies, CLI


def test_inbox_retention_is_independent_of_the_stream_history(server, database_url, publisher, token, user):
    ancient = boxed(publisher, "older than the inbox keeps", user_id=user)
    old = boxed(publisher, "old but in the inbox", user_id=user)
    bearer = token(user)
    change(server, bearer, "dismiss", {"ids": [str(ancient)]})
    state = publisher.app.extensions["notifications"]
    with publisher.app.app_context():
        state.pruner.prune_once(older_than=0, wait=True)  # the whole stream history
    assert query(database_url, "SELECT count(*) FROM notification_events WHERE id IN (%s, %s)", old, ancient) == [(0,)]
    assert {old}.issubset(ids_of(listing(server, bearer, "limit=100")))
    # past NOTIFICATIONS_INBOX_RETENTION (90d), as is everything stored before it: gone, with
    # its read state
    query(database_url, AGE_UP_TO, ancient)
    with publisher.app.app_context():
        state.pruner.prune_once(wait=True)
    assert query(database_url, "SELECT count(*) FROM notification_events_inbox WHERE event_id = %s", ancient) == [(0,)]
    assert query(database_url, "SELECT count(*) FROM notification_events_inbox_marks WHERE event_id = %s", ancient) == [
        (0,)
    ]
    assert old in ids_of(listing(server, bearer, "limit=100"))


def test_cookie_auth_and_its_csrf_header(server, publisher, token, user):
    item = boxed(publisher, "via cookie", user_id=user)
    jwt_cookie = token(user, csrf="double-submit-value")
    cookie = {"Cookie": f"access_token_cookie={jwt_cookie}"}
    status, page = call(server, "GET", INBOX, headers=cookie)  # reading needs no CSRF header
    assert status == 200 and page["items"][0]["id"] == str(item), page
    for headers in [cookie, {**cookie, "X-CSRF-TOKEN": "wrong"}]:
        status, answer = call(server, "POST", f"{INBOX}/read", headers=headers, body={"ids": [str(item)]})
        assert_error(status, answer, 401)
    assert listing(server, token(user))["items"][0]["read"] is False
    status, answer = call(
        server,
        "POST",
        f"{INBOX}/read",
        headers={**cookie, "X-CSRF-TOKEN": "double-submit-value"},
        body={"ids": [str(item)]},
    )
    assert status == 200, answer
    assert listing(server, token(user))["items"][0]["read"] is True


def test_cli_publish_inbox_and_the_inbox_command(server, flask_cli, token, user):
    data = json.dumps({"type": "notification", "notificationType": "info", "title": "CLI", "message": "hello"})
    result = flask_cli("publish", "notification", data, "--user", user, "--inbox")
    event_id = int(result.stdout)
    assert listing(server, token(user))["items"][0]["id"] == str(event_id)
    refused = flask_cli("publish", "order", '{"message": "x"}', "--user", user, "--inbox", check=False)
    assert refused.returncode != 0 and "notification" in refused.stderr
    shown = flask_cli("inbox", user)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{event_id}\t") and lines[0].endswith("\tunread\tCLI: hello"), lines
    assert lines[-1] == f"unread: {listing(server, token(user))['unread']}"


def test_read_state_survives_killed_workers(server, publisher, token, user):
    """The state is PostgreSQL's: workers killed mid-flight (SIGKILL) and respawned answer the same."""
    bearer = token(user)
    read, dismissed, unread = (boxed(publisher, f"k{n}", user_id=user) for n in range(3))
    change(server, bearer, "read", {"ids": [str(read)]})
    change(server, bearer, "dismiss", {"ids": [str(dismissed)]})
    before = listing(server, bearer, "limit=100")
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until_serving(server, publisher)
    after = listing(server, bearer, "limit=100")
    assert after == before
    states = {int(i["id"]): i["read"] for i in after["items"]}
    assert states[read] is True and states[unread] is False and dismissed not in states


def test_the_count_agrees_with_the_list_through_batches_rollbacks_and_pruning(server, database_url, publisher, user):
    """The unread count (counted from positions, not rows) equals the unread items listed, after
    every step of a seeded mix of batches, rollbacks, changes and pruning."""
    import random

    rng = random.Random(15)
    note = {"type": "notification", "notificationType": "info", "message": "m"}
    targets = [
        {"user_id": user},
        {},
        {"channel": "team"},
        {"user_id": user, "channel": "team"},
        {"user_id": "x" + user},
    ]
    engine = create_engine(database_url)
    state = publisher.app.extensions["notifications"]

    def check(channels: tuple[str, ...]) -> None:
        page = inbox.list(user, channels=channels, limit=100)
        assert page.next is None
        assert page.unread == sum(not i.read for i in page.items) == inbox.unread_count(user, channels=channels)

    try:
        with publisher.app.app_context():
            for step in range(40):
                roll = rng.random()
                if roll < 0.4:
                    batch = [
                        {"event": "notification", "data": note, "inbox": True, **rng.choice(targets)} for _ in range(5)
                    ]
                    publisher.stored([int(i) for i in api("publish_many")(batch)])
                elif roll < 0.5:
                    with pytest.raises(RuntimeError), engine.begin() as conn:
                        api("publish_many")([{"event": "notification", "data": note, "inbox": True}], connection=conn)
                        raise RuntimeError("rolled back")
                else:
                    items = [i.id for i in inbox.list(user, channels=("team",), limit=100).items]
                    if items:
                        picked = rng.sample(items, min(3, len(items)))
                        action = rng.choice(["read", "unread", "dismiss", "upto"])
                        if action == "read":
                            inbox.mark_read(user, picked, channels=("team",))
                        elif action == "unread":
                            inbox.mark_unread(user, picked, channels=("team",))
                        elif action == "dismiss":
                            inbox.dismiss(user, picked[:1], channels=("team",))
                        else:
                            inbox.mark_read(user, up_to=rng.choice(items))
                if step == 30:  # the oldest half of this test's items past the retention
                    mine = sorted(int(i.id) for i in inbox.list(user, channels=("team",), limit=100).items)
                    query(database_url, AGE_UP_TO, mine[len(mine) // 2])
                    state.pruner.prune_once(wait=True)
                check(())
                check(("team",))
    finally:
        engine.dispose()


def test_reads_fall_back_to_plain_statements_when_prepared_ones_vanish(server, database_url, publisher, user):
    """Behind a pooler in transaction mode a statement prepared on one server connection is
    missing on the next: the read still answers, and the store stops preparing."""
    from notifications.inbox_store import InboxStore
    from notifications.schema import Names

    boxed(publisher, "counted", user_id=user)
    engine = create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    try:
        store = InboxStore(engine, Names(), reads=engine)
        with engine.connect() as conn:
            first = store.unread(conn, user, ())
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one() >= 1
            conn.exec_driver_sql("DEALLOCATE ALL")  # what a pooler's next server connection looks like
            assert store.unread(conn, user, ()) == first >= 1
            assert store.statements.enabled is False
            rows, count = store.page(conn, user, (), 5, None, False)
            assert count == first and rows
    finally:
        engine.dispose()
