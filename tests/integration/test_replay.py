"""Replay after reconnect: by ``Last-Event-ID`` header or ``?lastEventId=``; header wins; no seam."""

from __future__ import annotations

import threading

from tests.support.checks import delivered_ids
from tests.support.sse_client import is_connect_message


def test_replay_by_header_then_live(open_stream, token, user, publisher):
    e1 = publisher.notify("one", user_id=user)
    e2 = publisher.broadcast_update("x", "created", {"n": 2}, user_id=user)
    e3 = publisher.publish("three", 3, user_id=user)
    c = open_stream(token(user), headers={"Last-Event-ID": str(e1)})
    assert c.next_message().retry is not None
    connect = c.next_message()
    assert is_connect_message(connect), connect.raw
    # the connect message's cursor is where this stream stands: before what it is about to replay
    assert e1 <= int(connect.id or -1) < e2
    assert c.next_event().int_id == e2
    assert c.next_event().int_id == e3
    e4 = publisher.notify("four", user_id=user)
    assert c.next_event().int_id == e4
    assert delivered_ids(c, after=e1) == [e2, e3, e4]


def test_replay_by_query_parameter(open_stream, token, user, publisher):
    e1 = publisher.notify("one", user_id=user)
    e2 = publisher.notify("two", user_id=user)
    c = open_stream(token(user), params={"lastEventId": str(e1)})
    c.wait_connected()
    assert c.next_event().int_id == e2
    e3 = publisher.notify("three", user_id=user)
    assert c.next_event().int_id == e3


def test_header_wins_over_query_parameter(open_stream, token, user, publisher):
    e1 = publisher.notify("one", user_id=user)
    e2 = publisher.notify("two", user_id=user)
    e3 = publisher.notify("three", user_id=user)
    c = open_stream(token(user), params={"lastEventId": str(e1)}, headers={"Last-Event-ID": str(e2)})
    c.wait_connected()
    assert c.next_event().int_id == e3
    assert e2 not in delivered_ids(c)


def test_last_event_id_zero_replays_everything_this_stream_may_see(open_stream, token, user, publisher):
    publisher.notify("someone else's", user_id=user + "-other")
    publisher.notify("mine", user_id=user)
    last = publisher.notify("last")
    c = open_stream(token(user), headers={"Last-Event-ID": "0"})
    c.wait_for_id(last)
    assert delivered_ids(c) == publisher.visible_ids(user)


def test_reconnect_with_the_cursor_replays_exactly_what_was_missed(open_stream, token, user, publisher):
    first = open_stream(token(user), name="first")
    first.wait_connected()
    seen = [publisher.notify(f"seen {i}", user_id=user) for i in range(3)]
    for event_id in seen:
        first.wait_for_id(event_id)
    beat = first.wait_for(lambda m: m.type == "heartbeat", timeout=5, what="heartbeat")
    first.close()
    missed = [publisher.notify(f"missed {i}", user_id=user) for i in range(3)]
    second = open_stream(token(user), headers={"Last-Event-ID": beat.last_event_id}, name="second")
    second.wait_for_id(missed[-1])
    assert delivered_ids(second) == missed


def test_no_gap_and_no_duplicate_at_the_seam(open_stream, token, user, publisher):
    """Streams connect while events are being published: replay + live is exact."""
    start = publisher.notify("start", user_id=user)
    published: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def pump() -> None:
        try:
            for i in range(40):
                published.append(publisher.notify(f"pump {i}", user_id=user))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=pump)
    t.start()
    streams = []
    for i in range(6):
        streams.append(open_stream(token(user), headers={"Last-Event-ID": str(start)}, name=f"seam-{i}"))
    t.join(60)
    assert done.is_set() and not errors, errors
    for c in streams:
        c.wait_for_id(published[-1], timeout=15)
        got = delivered_ids(c, after=start)
        assert got == published, f"{c.name}: missing {sorted(set(published) - set(got))}; got {got}"


def test_up_to_date_id_replays_nothing_and_goes_live(open_stream, token, user, publisher):
    newest = publisher.notify("newest")
    c = open_stream(token(user), headers={"Last-Event-ID": str(newest)})
    connect = c.wait_connected()
    assert not any(m.type == "reset" for m in c.messages[: c.messages.index(connect)])
    live = publisher.notify("live", user_id=user)
    assert c.next_event().int_id == live
