"""Grants (README "Grants"; targeting: README "Publishing"): who may read whose events and which
channels, and who may publish where, as a client sees it on the main server (public channels:
news, status)."""

from __future__ import annotations

import pytest

from tests.support.checks import assert_refused

from .conftest import PUBLIC_CHANNELS
from .wire import never_received, publish


def grant(subscribe=(), publish=()):
    return {"notifications": {"subscribe": list(subscribe), "publish": list(publish)}}


# ------------------------------------------------------------------ ?userId=


def test_other_user_without_grant_is_refused_naming_it(open_stream, token, user):
    data = assert_refused(open_stream(token(user), params={"userId": f"{user}-other"}), 403)
    assert data["userId"] == f"{user}-other", data


@pytest.mark.parametrize(
    "claims",
    [
        {"notifications": "user:*"},  # not an object
        {"notifications": {"subscribe": "user:*"}},  # not a list
        {"notifications": {"subscribe": [["user:*"]]}},  # not strings
        {"notifications": {"publish": ["user:*"]}},  # a publish grant is not a subscribe grant
        {"notifications": {"subscribe": ["user:4"]}},  # exact pattern: user:4 is not user:42
        {"notifications": {"subscribe": ["user:42x"]}},
        {"notifications": {"subscribe": ["user"]}},
        {"mercure": {"subscribe": ["*"]}},  # another claim
    ],
    ids=[
        "string",
        "subscribe-string",
        "nested-list",
        "publish-only",
        "prefix-without-star",
        "longer",
        "no-colon",
        "other-claim",
    ],
)
def test_malformed_or_narrow_user_grants_do_not_widen(open_stream, token, user, claims):
    data = assert_refused(open_stream(token(user, **claims), params={"userId": "42"}), 403)
    assert data["userId"] == "42"


@pytest.mark.parametrize(
    "pattern", ["user:{target}", "user:*", "user:{target_prefix}*", "*"], ids=["exact", "user-star", "prefix", "star"]
)
def test_user_grant_reads_that_users_events_not_the_owners(open_stream, token, publisher, user, pattern):
    target = f"{user}-target"
    claims = grant(subscribe=[pattern.format(target=target, target_prefix=target[:-3])])
    c = open_stream(token(user, **claims), params={"userId": target})
    c.wait_connected()
    own = publisher.notify("for the token owner", user_id=user)
    other = publisher.notify("for someone else", user_id=f"{user}-nobody")
    broadcast = publisher.notify("for everyone")
    theirs = publisher.notify("for the target", user_id=target)
    assert c.wait_for_id(broadcast).json()["message"] == "for everyone"
    assert c.wait_for_id(theirs).json()["message"] == "for the target"
    never_received(c, theirs, [own, other])


def test_own_user_id_needs_no_grant(open_stream, token, publisher, user):
    c = open_stream(token(user), params={"userId": user})
    c.wait_connected()
    c.wait_for_id(publisher.notify("mine", user_id=user))


def test_numeric_subject_is_compared_as_a_string(open_stream, jwt_secret, publisher):
    import time

    import jwt

    sub = int(time.time() * 1000) % 10**9
    tok = jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, jwt_secret, algorithm="HS256")
    c = open_stream(tok, params={"userId": str(sub)})
    c.wait_connected()
    c.wait_for_id(publisher.notify("numeric", user_id=str(sub)))


# ------------------------------------------------------------------ ?channels=


def test_non_public_channel_without_grant_is_refused_naming_it(open_stream, token, user):
    data = assert_refused(open_stream(token(user), params={"channels": "news,orders"}), 403)
    assert data["channel"] == "orders", data


@pytest.mark.parametrize(
    "patterns, channel, refused",
    [
        (["orders"], "orders", "orders-eu"),
        (["tenant-7:*"], "tenant-7:orders", "tenant-8:orders"),
        (["tenant-7:*"], "tenant-7:billing", "tenant-70:billing"),
    ],
    ids=["exact", "prefix", "prefix-is-not-a-substring"],
)
def test_channel_grant_allows_and_delivers(open_stream, token, publisher, user, patterns, channel, refused):
    tok = token(user, **grant(subscribe=patterns))
    data = assert_refused(open_stream(tok, params={"channels": refused}), 403)
    assert data["channel"] == refused
    c = open_stream(tok, params={"channels": channel})
    c.wait_connected()
    hidden = publisher.notify("other channel", channel=refused)
    mine_other_channel = publisher.notify("mine, other channel", channel=refused, user_id=user)
    seen = publisher.notify("granted channel", channel=channel)
    assert c.wait_for_id(seen).json()["message"] == "granted channel"
    never_received(c, seen, [hidden, mine_other_channel])


@pytest.mark.parametrize("channel", PUBLIC_CHANNELS)
def test_public_channels_are_readable_by_anyone(open_stream, token, publisher, user, channel):
    c = open_stream(token(user), params={"channels": channel})
    c.wait_connected()
    assert c.wait_for_id(publisher.notify("public", channel=channel)).json()["message"] == "public"


def test_channel_and_user_targeting_combined(open_stream, token, publisher, user):
    """An event with both user and channel reaches that user's streams subscribed to it only."""
    subscribed = open_stream(token(user), params={"channels": "news"})
    unsubscribed = open_stream(token(user))
    stranger = open_stream(token(f"{user}-x"), params={"channels": "news"})
    for c in (subscribed, unsubscribed, stranger):
        c.wait_connected()
    both = publisher.notify("both", channel="news", user_id=user)
    sentinel = publisher.notify("sentinel")
    subscribed.wait_for_id(both)
    never_received(unsubscribed, sentinel, [both])
    never_received(stranger, sentinel, [both])


@pytest.mark.parametrize(
    "channels",
    ["a b", "x" * 129, ",".join(f"c{i}" for i in range(51)), "news,,status", "news,a/b", "ünïcode", "a\x00b"],
    ids=["space", "129-chars", "51-channels", "empty-name", "slash", "non-ascii", "nul"],
)
def test_bad_channel_names_are_400(open_stream, token, user, channels):
    tok = token(user, **grant(subscribe=["*"]))  # even an all-powerful grant: the name is wrong
    assert_refused(open_stream(tok, params={"channels": channels}), 400)


def test_fifty_channels_of_128_chars_are_fine(open_stream, token, user):
    names = [f"{i:02d}" + "x" * 126 for i in range(50)]
    c = open_stream(token(user, **grant(subscribe=["*"])), params={"channels": ",".join(names)})
    c.wait_connected()


# ------------------------------------------------------------------ publish grants (HTTP)


@pytest.mark.parametrize(
    "patterns, allowed, refused",
    [
        (
            ["orders"],
            [{"channel": "orders"}],
            [{"channel": "billing"}, {}, {"userId": "u1"}, {"channel": "orders", "userId": "u1"}],
        ),
        (["user:*"], [{"userId": "u1"}], [{}, {"channel": "orders"}]),
        (
            ["tenant-7:*", "user:u1"],
            [{"channel": "tenant-7:x", "userId": "u1"}],
            [{"channel": "tenant-7:x", "userId": "u2"}, {"channel": "tenant-8:x"}],
        ),
        (["*"], [{}, {"channel": "orders"}, {"userId": "u1"}], []),
        ([], [], [{}, {"channel": "news"}, {"userId": "u1"}]),
    ],
    ids=["channel", "users", "channel-and-user", "star", "none"],
)
def test_publish_needs_a_grant_for_each_target(server, token, user, patterns, allowed, refused):
    tok = token(user, **grant(publish=patterns))
    for target in allowed:
        r = publish(server, tok, {"event": "x", "data": {"ok": True}, **target})
        assert r.status == 201, (target, r.status, r.body)
        assert r.json()["id"].isdigit()
    for target in refused:
        r = publish(server, tok, {"event": "x", "data": {"ok": True}, **target})
        assert r.status == 403, (target, r.status, r.body)
        body = r.json()
        assert body["code"] == 403 and body["target"] in ("*", target.get("channel"), f"user:{target.get('userId')}")


def test_subscribe_grant_does_not_allow_publishing(server, token, user):
    r = publish(server, token(user, **grant(subscribe=["*"])), {"event": "x", "data": 1, "channel": "news"})
    assert r.status == 403, r.body


def test_published_channel_event_reaches_subscribers_only(server, open_stream, token, user):
    reader = open_stream(token(user, **grant(subscribe=["orders"])), params={"channels": "orders"})
    outsider = open_stream(token(f"{user}-o"))
    reader.wait_connected()
    outsider.wait_connected()
    r = publish(
        server,
        token("svc", **grant(publish=["orders", "*"])),
        {"event": "order.created", "data": {"id": 7}, "channel": "orders"},
    )
    assert r.status == 201, r.body
    got = reader.wait_for_id(r.json()["id"])
    assert got.type == "order.created" and got.json() == {"id": 7}
    s = publish(server, token("svc", **grant(publish=["*"])), {"event": "sentinel", "data": 0})
    never_received(outsider, int(s.json()["id"]), [int(r.json()["id"])])


def test_batch_publish_is_all_or_nothing_on_grants(server, open_stream, token, user):
    c = open_stream(token(user, **grant(subscribe=["orders"])), params={"channels": "orders"})
    c.wait_connected()
    tok = token("svc", **grant(publish=["orders"]))
    r = publish(
        server, tok, [{"event": "a", "data": 1, "channel": "orders"}, {"event": "b", "data": 2, "channel": "secret"}]
    )
    assert r.status == 403, r.body
    ok = publish(server, tok, [{"event": "c", "data": 3, "channel": "orders"}])
    assert ok.status == 201, ok.body
    first = c.wait_for(lambda m: m.is_event and m.type in ("a", "b", "c"))
    assert first.type == "c", f"an event of a refused batch was delivered: {first.raw!r}"
