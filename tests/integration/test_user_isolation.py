"""Targeting by user: user A never sees user B's events, live or replayed."""

from __future__ import annotations

import secrets

from tests.support.checks import assert_never_received, delivered_ids


def other_user() -> str:
    return "other-" + secrets.token_hex(4)


def test_targeted_events_reach_only_their_user(open_stream, token, user, publisher):
    bob = other_user()
    alice_1 = open_stream(token(user), name="alice-1")
    alice_2 = open_stream(token(user), name="alice-2")
    bob_s = open_stream(token(bob), name="bob")
    for c in (alice_1, alice_2, bob_s):
        c.wait_connected()

    targeted = [
        publisher.notify("for alice", user_id=user),
        publisher.broadcast_update("doc", "updated", {"id": 1}, user_id=user),
        publisher.publish("private.thing", {"secret": 1}, user_id=user),
    ]
    sentinel = publisher.publish("everyone", {"n": 1})

    for c in (alice_1, alice_2):
        for event_id in [*targeted, sentinel]:
            c.wait_for_id(event_id)
    assert_never_received(bob_s, sentinel, targeted)


def test_bob_events_do_not_reach_alice(open_stream, token, user, publisher):
    bob = other_user()
    alice = open_stream(token(user), name="alice")
    bob_s = open_stream(token(bob), name="bob")
    alice.wait_connected()
    bob_s.wait_connected()
    for_bob = [publisher.notify(f"bob {i}", user_id=bob) for i in range(3)]
    sentinel = publisher.notify("all")
    for event_id in for_bob:
        bob_s.wait_for_id(event_id)
    assert_never_received(alice, sentinel, for_bob)


def test_broadcasts_reach_every_user(open_stream, token, publisher):
    users = [other_user() for _ in range(3)]
    streams = [open_stream(token(u), name=u) for u in users]
    for c in streams:
        c.wait_connected()
    event_id = publisher.broadcast_update("config", "updated", {"v": 2})
    for c in streams:
        assert c.wait_for_id(event_id).json()["payload"] == {"v": 2}


def test_own_user_id_parameter_is_the_same_as_the_default(open_stream, token, user, publisher):
    c = open_stream(token(user), params={"userId": user})
    c.wait_connected()
    event_id = publisher.notify("hi", user_id=user)
    c.wait_for_id(event_id)


def test_replay_never_includes_other_users_events(open_stream, token, user, publisher):
    bob = other_user()
    start = publisher.notify("marker")
    mine = publisher.notify("mine", user_id=user)
    theirs = publisher.notify("theirs", user_id=bob)
    last = publisher.notify("last")
    c = open_stream(token(user), headers={"Last-Event-ID": str(start)})
    c.wait_for_id(last)
    assert delivered_ids(c, after=start)[:2] == [mine, last]
    assert theirs not in delivered_ids(c)


def test_numeric_user_id_matches_the_string_sub(open_stream, token, publisher):
    uid = 420000 + secrets.randbelow(10000)
    c = open_stream(token(str(uid)))
    c.wait_connected()
    event_id = publisher.notify("int id", user_id=uid)
    c.wait_for_id(event_id)
