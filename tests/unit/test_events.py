"""notifications.events: validation and the event data models (pure, no database)."""

from __future__ import annotations

import json
import math

import pytest

from notifications.events import (
    build_notification,
    build_update,
    parse_channels,
    parse_duration,
    serialize,
    validate_channel,
    validate_event_name,
)

# ------------------------------------------------------------------ event names


@pytest.mark.parametrize("name", ["notification", "update", "my-event", "a_b", "v1.2", "ns:thing", "X", "9"])
def test_valid_event_names_are_returned(name: str) -> None:
    assert validate_event_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "has space", "line\nbreak", "cr\r", "slash/y", "comma,y", "emoji✓", "semi;colon", "nul\x00"]
)
def test_invalid_event_names_raise(name: str) -> None:
    with pytest.raises(ValueError):
        validate_event_name(name)


# ------------------------------------------------------------------ channels


@pytest.mark.parametrize("name", ["news", "a", "A-z_0.9:x", "c" * 128, "room:42", "team.ops-1"])
def test_valid_channels_are_returned(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize("name", ["", "c" * 129, "bad name", "a,b", "é", "a/b", "tab\t", "nl\n", "star*"])
def test_invalid_channels_raise(name: str) -> None:
    with pytest.raises(ValueError):
        validate_channel(name)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ()),
        ("", ()),
        ("news", ("news",)),
        ("news,sports", ("news", "sports")),
        ("a:1,b.2,c-3", ("a:1", "b.2", "c-3")),
    ],
)
def test_parse_channels(raw: str | None, expected: tuple[str, ...]) -> None:
    assert parse_channels(raw) == expected


def test_parse_channels_accepts_fifty() -> None:
    names = [f"c{i}" for i in range(50)]
    assert parse_channels(",".join(names)) == tuple(names)


def test_parse_channels_refuses_more_than_fifty() -> None:
    with pytest.raises(ValueError):
        parse_channels(",".join(f"c{i}" for i in range(51)))


@pytest.mark.parametrize("raw", ["news,bad name", "ok," + "x" * 129, "news,é", "a/b"])
def test_parse_channels_refuses_invalid_names(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_channels(raw)


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30), ("15m", 900), ("6h", 21600), ("7d", 604800), ("45", 45), (45, 45)],
)
def test_parse_duration(raw: str | int, seconds: float) -> None:
    result = parse_duration(raw)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize("raw", ["abc", "10x", "", "s", "m5", "1 fortnight", "5mm"])
def test_parse_duration_refuses_junk(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)


# ------------------------------------------------------------------ notification


def test_build_notification_defaults() -> None:
    assert build_notification("hello") == {
        "type": "notification",
        "notificationType": "info",
        "message": "hello",
        "duration": 5000,
    }


def test_build_notification_with_everything() -> None:
    assert build_notification("saved", notification_type="success", title="Done", duration=1500) == {
        "type": "notification",
        "notificationType": "success",
        "title": "Done",
        "message": "saved",
        "duration": 1500,
    }


def test_build_notification_omits_title_when_not_given() -> None:
    assert "title" not in build_notification("x", notification_type="warning")


@pytest.mark.parametrize("kind", ["success", "error", "warning", "info"])
def test_build_notification_accepts_the_four_types(kind: str) -> None:
    assert build_notification("x", notification_type=kind)["notificationType"] == kind


@pytest.mark.parametrize("kind", ["fatal", "", "INFO", "debug"])
def test_build_notification_refuses_other_types(kind: str) -> None:
    with pytest.raises(ValueError):
        build_notification("x", notification_type=kind)


# ------------------------------------------------------------------ update


@pytest.mark.parametrize("action", ["created", "updated", "deleted"])
def test_build_update(action: str) -> None:
    assert build_update("order", action, {"id": 7, "total": 9.5}) == {
        "type": "update",
        "entity": "order",
        "action": action,
        "payload": {"id": 7, "total": 9.5},
    }


@pytest.mark.parametrize("action", ["exploded", "", "CREATED", "create"])
def test_build_update_refuses_other_actions(action: str) -> None:
    with pytest.raises(ValueError):
        build_update("order", action, {})


# ------------------------------------------------------------------ serialize


def test_serialize_is_compact_json() -> None:
    assert serialize({"a": 1, "b": [1, 2], "c": {"d": None}}) == '{"a":1,"b":[1,2],"c":{"d":null}}'


@pytest.mark.parametrize("value", [None, True, 0, 1.5, "text", [1, "a"], {"k": "v"}])
def test_serialize_round_trips_any_json_value(value: object) -> None:
    assert json.loads(serialize(value)) == value


@pytest.mark.parametrize(
    "text", ["line\nbreak", "crlf\r\nend", "cr\ronly", "sep\u2028arator", "para\u2029graph", "\x85nel"]
)
def test_serialize_never_emits_a_raw_line_break(text: str) -> None:
    out = serialize({"t": text})
    assert "\n" not in out and "\r" not in out
    assert json.loads(out) == {"t": text}


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        {"x": math.inf},
        [-math.inf],
        object(),
        {"s": {1, 2}},
        b"bytes",
        {"nul": "a\x00b"},
        {"a\x00": 1},
        ["\x00"],
    ],
    ids=["nan", "inf", "-inf", "object", "set", "bytes", "nul-value", "nul-key", "nul-in-list"],
)
def test_serialize_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        serialize(value)


def test_serialize_refuses_too_big_in_bytes() -> None:
    # 42 characters but more than 50 bytes (both as UTF-8 and as \\u escapes)
    with pytest.raises(ValueError):
        serialize("é" * 40, max_bytes=50)


def test_serialize_limit_is_inclusive() -> None:
    out = serialize("x" * 48, max_bytes=50)  # '"' + 48 + '"' = exactly 50 bytes
    assert len(out.encode()) == 50
    with pytest.raises(ValueError):
        serialize("x" * 49, max_bytes=50)


def test_serialize_default_limit_is_64_kib() -> None:
    serialize("x" * 65000)
    with pytest.raises(ValueError):
        serialize("x" * 65537)
