"""Heartbeats: every NOTIFICATIONS_HEARTBEAT_INTERVAL seconds, carrying the stream's cursor."""

from __future__ import annotations

import pytest

INTERVAL = 1.0


@pytest.fixture(scope="module")
def server_env():
    return {"NOTIFICATIONS_HEARTBEAT_INTERVAL": str(INTERVAL)}


def is_heartbeat(m):
    return m.type == "heartbeat"


def test_heartbeats_arrive_on_time(open_stream, token, user):
    c = open_stream(token(user))
    connect = c.wait_connected()
    beats = [c.wait_for(is_heartbeat, timeout=INTERVAL * 3, what=f"heartbeat {i}") for i in range(4)]
    times = [connect.at] + [b.at for b in beats]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # bounds leave room for a loaded 2-core machine, yet fail a wrong or ignored interval
    assert gaps[0] <= INTERVAL * 2.5, f"first heartbeat too late: {gaps}"
    for gap in gaps[1:]:
        assert INTERVAL * 0.5 <= gap <= INTERVAL * 2.5, f"heartbeat gaps off a {INTERVAL}s interval: {gaps}"
    mean = sum(gaps[1:]) / len(gaps[1:])
    assert INTERVAL * 0.75 <= mean <= INTERVAL * 1.6, f"mean heartbeat gap {mean:.2f}s: {gaps}"


def test_heartbeat_wire_and_starting_cursor(open_stream, token, user):
    c = open_stream(token(user))
    connect = c.wait_connected()
    beat = c.wait_for(is_heartbeat, timeout=INTERVAL * 3, what="heartbeat")
    assert beat.raw == b"id: " + (connect.id or "").encode() + b"\nevent: heartbeat\ndata: {}\n\n"
    assert beat.json() == {}


def test_heartbeat_cursor_follows_the_last_event_received(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    for text in ("first", "second"):
        event_id = publisher.notify(text, user_id=user)
        c.wait_for_id(event_id)
        beat = c.wait_for(is_heartbeat, timeout=INTERVAL * 3, what=f"heartbeat after {text}")
        assert beat.id == str(event_id), beat.raw


def test_heartbeat_cursor_after_replay(open_stream, token, user, publisher):
    e1 = publisher.notify("one", user_id=user)
    e2 = publisher.notify("two", user_id=user)
    c = open_stream(token(user), headers={"Last-Event-ID": str(e1)})
    c.wait_for_id(e2)
    beat = c.wait_for(is_heartbeat, timeout=INTERVAL * 3, what="heartbeat after replay")
    assert beat.id == str(e2), beat.raw


def test_heartbeats_on_many_streams(server, open_stream, token, user):
    clients, _ = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"hb{i}"), minimum=4)
    for c in clients:
        c.wait_connected()
        c.wait_for(is_heartbeat, timeout=INTERVAL * 3, what="heartbeat")
