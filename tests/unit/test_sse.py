"""notifications.sse.encode: the wire format as a pure function (input → exact bytes)."""

from __future__ import annotations

import json

import pytest

from notifications.sse import encode
from tests.support.sse_client import parse


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": '{"a":1}'}, b'data: {"a":1}\n\n'),
        ({"retry": 3000}, b"retry: 3000\n\n"),
        ({"event": "heartbeat", "data": "{}", "id": 7}, b"id: 7\nevent: heartbeat\ndata: {}\n\n"),
        ({"event": "update", "data": "{}", "id": "12"}, b"id: 12\nevent: update\ndata: {}\n\n"),
        ({"event": "error", "data": '{"code":401}'}, b'event: error\ndata: {"code":401}\n\n'),
        # multi-line data: one data line per line, whatever the line separator
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\rb"}, b"data: a\ndata: b\n\n"),
        # CR/LF can not break out of the event or id line
        ({"event": "up\r\ndate", "data": "1"}, b"event: update\ndata: 1\n\n"),
        ({"event": "x\ny", "data": "1"}, b"event: xy\ndata: 1\n\n"),
        ({"id": "1\r2\n3", "data": "1"}, b"id: 123\ndata: 1\n\n"),
        # UTF-8 on the wire
        ({"data": '"é漢"'}, 'data: "é漢"\n\n'.encode()),
    ],
)
def test_encode_exact_bytes(kwargs: dict[str, object], expected: bytes) -> None:
    assert encode(**kwargs) == expected  # type: ignore[arg-type]


def test_encode_returns_bytes() -> None:
    assert isinstance(encode(event="notification", data="{}", id=1), bytes)


def test_int_and_str_ids_encode_the_same() -> None:
    assert encode(id=42, data="{}") == encode(id="42", data="{}")


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "two\nlines",
        "crlf\r\nline",
        "lone\rcr",
        "trailing newline\n",
        "\nleading newline",
        "data: looks like a field\n\nand a blank line",
        ": looks like a comment",
        "ünïcödé ✓ \u2028 separator",
    ],
)
def test_data_round_trips_through_a_whatwg_parser(text: str) -> None:
    messages = parse(encode(event="custom", id=5, data=text))
    assert len(messages) == 1
    (m,) = messages
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert (m.type, m.id, m.data) == ("custom", "5", expected)


def test_every_message_ends_with_exactly_one_blank_line() -> None:
    body = encode(retry=1234) + encode(event="a", data="x\ny", id=1) + encode(event="b", data="{}", id=2)
    messages = parse(body)
    assert [(m.retry, m.type, m.data) for m in messages] == [
        (1234, "message", None),
        (None, "a", "x\ny"),
        (None, "b", "{}"),
    ]
    assert body.endswith(b"\n\n") and not body.endswith(b"\n\n\n")


def test_compact_json_payload_is_one_data_line() -> None:
    payload = json.dumps({"text": "multi\nline\r\n"}, separators=(",", ":"))
    out = encode(event="x", data=payload, id=3)
    assert out.count(b"data:") == 1
    assert json.loads(parse(out)[0].data or "") == {"text": "multi\nline\r\n"}
