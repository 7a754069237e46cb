"""A newline inside data never breaks the SSE framing: the client gets equal JSON back."""

from __future__ import annotations

import pytest

from tests.support.checks import assert_event_block

TRICKY = [
    "line one\nline two",
    "windows\r\nline",
    "old mac\rline",
    "\n\nleading and trailing\n\n",
    "data: injected\n\nevent: error\ndata: {}\n\n",
    "id: 999999\nretry: 1\n",
    ": a comment\n:another",
    "unicode ✓ é 漢字 \u2028 \u2029 \x85",
    'tab\tand "quotes" and \\ backslash',
]


@pytest.fixture
def stream(open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    return c


@pytest.mark.parametrize("text", TRICKY)
def test_custom_event_strings(stream, publisher, user, text):
    data = {"text": text, "list": [text], "nested": {text: text}}
    event_id = publisher.publish("tricky", data, user_id=user)
    msg = stream.wait_for_id(event_id)
    assert msg.type == "tricky"
    assert msg.json() == data
    assert msg.raw.count(b"\ndata:") + msg.raw.startswith(b"data:") == 1, msg.raw


def test_top_level_string_with_newlines(stream, publisher, user):
    event_id = publisher.publish("str", "a\nb\r\nc", user_id=user)
    msg = stream.wait_for_id(event_id)
    assert msg.json() == "a\nb\r\nc"


def test_notification_fields_with_newlines(stream, publisher, user):
    event_id = publisher.notify("body\nwith\r\nbreaks", title="title\nbreak", user_id=user)
    assert_event_block(
        stream.wait_for_id(event_id),
        "notification",
        {
            "type": "notification",
            "notificationType": "info",
            "title": "title\nbreak",
            "message": "body\nwith\r\nbreaks",
            "duration": 5000,
        },
        event_id=event_id,
    )


def test_update_payload_with_newlines(stream, publisher, user):
    payload = {"note\nkey": "value\r\n", "n": [1, "\n"]}
    event_id = publisher.broadcast_update("memo", "updated", payload, user_id=user)
    assert stream.wait_for_id(event_id).json()["payload"] == payload


def test_events_after_tricky_ones_still_parse(stream, publisher, user):
    ids = [publisher.publish("tricky", {"t": t}, user_id=user) for t in TRICKY]
    tail = publisher.notify("plain", user_id=user)
    received = [stream.wait_for_id(i) for i in [*ids, tail]]
    assert [m.json()["t"] for m in received[:-1]] == TRICKY
    assert received[-1].json()["message"] == "plain"
    assert not [m for m in stream.messages if m.type == "error"]


def test_large_event_is_delivered_intact(stream, publisher, user):
    """Bigger than NOTIFY's 8000-byte cap: the doorbell design must not care."""
    data = {"blob": "x\n" * 20000}
    event_id = publisher.publish("big", data, user_id=user)
    assert stream.wait_for_id(event_id).json() == data


TRICKY_USER_IDS = ['"quoted"', "back\\slash", "unicode ✓ 漢字 🎉", "\u2028", '],["x",{},null,null,false],[']


@pytest.mark.parametrize("suffix", TRICKY_USER_IDS)
def test_user_ids_of_any_characters_reach_that_user_only(open_stream, token, user, publisher, suffix):
    """A batch is sent to PostgreSQL as one JSON text: a user id with quotes, backslashes or
    JSON-like text is that user's, whole, and reaches nobody else."""
    target = f"{user} {suffix}"
    mine, other = open_stream(token(target)), open_stream(token(user))
    mine.wait_connected()
    other.wait_connected()
    ids = publisher.call("publish_many", [{"event": "own", "data": {"who": target}, "user_id": target}] * 2)
    broadcast = publisher.publish("everyone", {"n": 1})
    mine.wait_for_id(broadcast)
    other.wait_for_id(broadcast)
    assert [(m.id, m.type, m.json()) for m in mine.events if m.type in ("own", "everyone")] == [
        *((i, "own", {"who": target}) for i in ids),
        (str(broadcast), "everyone", {"n": 1}),
    ]
    assert [m.type for m in other.events if m.type in ("own", "everyone")] == ["everyone"]
