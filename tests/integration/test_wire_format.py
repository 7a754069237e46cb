"""Headers and the exact bytes of every event type on the wire (README "The stream: GET /api/notifications/stream")."""

from __future__ import annotations

import re

from tests.support.checks import RETRY_BLOCK, assert_event_block
from tests.support.sse_client import CONNECT_TEXT, is_connect_message

CONNECT_DATA = {"type": "notification", "notificationType": "info", "message": CONNECT_TEXT, "duration": 5000}


def test_stream_headers(open_stream, token, user):
    c = open_stream(token(user))
    assert c.wait_headers() == 200
    content_type = c.header("Content-Type") or ""
    assert content_type.split(";")[0].strip().lower() == "text/event-stream", content_type
    assert re.search(r"charset=utf-8", content_type, re.I), content_type
    assert "no-cache" in (c.header("Cache-Control") or "").lower()
    assert (c.header("X-Accel-Buffering") or "").lower() == "no"
    assert (c.header("Connection") or "").lower() == "keep-alive"
    assert c.header("Content-Length") is None
    assert c.header("Content-Encoding") in (None, "identity")
    c.wait_connected()


def test_first_bytes_are_a_jittered_retry(open_stream, token, user):
    values = []
    for i in range(8):
        c = open_stream(token(user), name=f"retry-{i}")
        first = c.next_message()
        assert RETRY_BLOCK.fullmatch(first.raw), f"first block is not 'retry: N': {first.raw!r}"
        assert c.raw.startswith(first.raw), "something came before the retry line"
        assert first.retry is not None and 1500 <= first.retry <= 4500, first.retry
        values.append(first.retry)
    assert len(set(values)) > 1, f"retry is not jittered across connections: {values}"


def test_connect_notification_carries_the_cursor(server, open_stream, token, user, publisher):
    # once both workers have delivered the newest event, a new stream starts at that cursor
    watchers, _ = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"w{i}"), minimum=2)
    newest = publisher.notify("before connect")
    for w in watchers:
        w.wait_for_id(newest)
    c = open_stream(token(user))
    assert c.next_message().retry is not None
    connect = c.next_message()
    assert is_connect_message(connect), connect.raw
    assert_event_block(connect, "notification", CONNECT_DATA, event_id=newest)


def test_connect_cursor_never_skips_an_event(open_stream, token, user, publisher):
    # published just before connecting: either the cursor is past it, or the event follows
    before = publisher.notify("racing the connect")
    c = open_stream(token(user))
    connect = c.wait_connected()
    cursor = int(connect.id or "-1")
    assert 0 <= cursor <= before
    if cursor < before:
        c.wait_for_id(before)
    after = publisher.notify("after connect")
    c.wait_for_id(after)


def test_notification_event(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    full = publisher.notify("Saved", notification_type="success", title="Order 7", duration=1234, user_id=user)
    default = publisher.notify("Plain", user_id=user)
    assert_event_block(
        c.wait_for_id(full),
        "notification",
        {
            "type": "notification",
            "notificationType": "success",
            "title": "Order 7",
            "message": "Saved",
            "duration": 1234,
        },
        event_id=full,
    )
    assert_event_block(
        c.wait_for_id(default),
        "notification",
        {"type": "notification", "notificationType": "info", "message": "Plain", "duration": 5000},
        event_id=default,
    )


def test_notification_types(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    for kind in ("success", "error", "warning", "info"):
        event_id = publisher.notify(f"a {kind}", notification_type=kind, user_id=user)
        assert c.wait_for_id(event_id).json()["notificationType"] == kind


def test_update_event(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    for action in ("created", "updated", "deleted"):
        payload = {"id": 7, "status": action, "items": [1, 2], "meta": {"x": None}}
        event_id = publisher.broadcast_update("order", action, payload, user_id=user)
        assert_event_block(
            c.wait_for_id(event_id),
            "update",
            {"type": "update", "entity": "order", "action": action, "payload": payload},
            event_id=event_id,
        )


def test_custom_events_carry_any_json_value(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    cases = [
        ("chat.message", {"text": "hi", "n": 1}),
        ("room:42", [1, "two", None, True]),
        ("score-update_v2", 3.25),
        ("plain", "just a string"),
        ("nothing", None),
        ("flag", False),
    ]
    for name, data in cases:
        event_id = publisher.publish(name, data, user_id=user)
        msg = c.wait_for_id(event_id)
        assert_event_block(msg, name, data, event_id=event_id)


def test_ids_are_increasing_decimal_strings(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    ids = [publisher.publish("seq", {"i": i}, user_id=user) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    received = [c.wait_for_id(i) for i in ids]
    assert [m.id for m in received] == [str(i) for i in ids]
    assert all(re.fullmatch(r"[1-9][0-9]*", m.id or "") for m in received)


def test_heartbeat_block(open_stream, token, user, publisher):
    c = open_stream(token(user))
    connect = c.wait_connected()
    beat = c.wait_for(lambda m: m.type == "heartbeat", timeout=5, what="heartbeat")
    assert beat.raw == f"id: {connect.id}\nevent: heartbeat\ndata: {{}}\n\n".encode()
