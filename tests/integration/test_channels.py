"""Channels: a channel event reaches the streams subscribed to it, and only those."""

from __future__ import annotations

import pytest

from tests.support.checks import assert_never_received, delivered_ids


@pytest.fixture(scope="module")
def server_env():
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": "news,sports,room:1"}


@pytest.fixture
def streams(open_stream, token, user):
    made = {
        "news": open_stream(token(user), params={"channels": "news"}, name="news"),
        "sports": open_stream(token(user), params={"channels": "sports"}, name="sports"),
        "both": open_stream(token(user), params={"channels": "news,sports"}, name="both"),
        "plain": open_stream(token(user), name="plain"),
    }
    for c in made.values():
        c.wait_connected()
    return made


def test_channel_event_reaches_subscribers_only(streams, publisher):
    event_id = publisher.publish("headline", {"t": "x"}, channel="news")
    sentinel = publisher.publish("tick", {})
    for name in ("news", "both"):
        assert streams[name].wait_for_id(event_id).json() == {"t": "x"}
    for name in ("sports", "plain"):
        assert_never_received(streams[name], sentinel, [event_id])


def test_each_helper_accepts_a_channel(streams, publisher):
    ids = [
        publisher.notify("goal", channel="sports"),
        publisher.broadcast_update("match", "updated", {"score": "1-0"}, channel="sports"),
        publisher.publish("whistle", None, channel="sports"),
    ]
    sentinel = publisher.publish("tick", {})
    for name in ("sports", "both"):
        for event_id in ids:
            streams[name].wait_for_id(event_id)
    for name in ("news", "plain"):
        assert_never_received(streams[name], sentinel, ids)


def test_broadcasts_still_reach_channel_subscribers(streams, publisher):
    event_id = publisher.notify("to all")
    for c in streams.values():
        c.wait_for_id(event_id)


def test_user_and_channel_targets_that_users_subscribed_streams(open_stream, token, user, publisher):
    bob = user + "-bob"
    alice_news = open_stream(token(user), params={"channels": "news"}, name="alice-news")
    alice_plain = open_stream(token(user), name="alice-plain")
    bob_news = open_stream(token(bob), params={"channels": "news"}, name="bob-news")
    for c in (alice_news, alice_plain, bob_news):
        c.wait_connected()
    event_id = publisher.notify("alice, news", user_id=user, channel="news")
    sentinel = publisher.notify("tick")
    alice_news.wait_for_id(event_id)
    assert_never_received(alice_plain, sentinel, [event_id])
    assert_never_received(bob_news, sentinel, [event_id])


def test_channel_names_with_punctuation(open_stream, token, user, publisher):
    c = open_stream(token(user), params={"channels": "room:1"})
    c.wait_connected()
    event_id = publisher.publish("msg", {"room": 1}, channel="room:1")
    c.wait_for_id(event_id)


def test_replay_respects_channels(open_stream, token, user, publisher):
    start = publisher.publish("tick", {})
    news = publisher.publish("headline", 1, channel="news")
    sports = publisher.publish("goal", 2, channel="sports")
    end = publisher.publish("tick", {})
    sub = open_stream(token(user), params={"channels": "news"}, headers={"Last-Event-ID": str(start)})
    plain = open_stream(token(user), headers={"Last-Event-ID": str(start)})
    sub.wait_for_id(end)
    plain.wait_for_id(end)
    assert delivered_ids(sub, after=start)[:2] == [news, end]
    assert sports not in delivered_ids(sub)
    assert delivered_ids(plain, after=start)[:1] == [end]
