"""The inbox's pure parts: ids, and which events may go into the inbox."""

from __future__ import annotations

import json

import pytest

from notifications.events import make_event
from notifications.inbox import MAX_IDS, parse_id, parse_ids


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("42", 42), ("9223372036854775807", 2**63 - 1), (7, 7)])
def test_ids_are_positive_decimal_strings_or_ints(value, expected):
    assert parse_id(value) == expected


@pytest.mark.parametrize("value", ["", "0", "-1", "1.5", " 1", "1 ", "1e3", "٣", str(2**63), "9" * 20, None, True, 0])
def test_anything_else_is_refused(value):
    with pytest.raises(ValueError):
        parse_id(value)


def test_over_http_ids_are_strings_only():
    with pytest.raises(ValueError):
        parse_id(5, strings_only=True)
    assert parse_ids(["3", "1", "3"], strings_only=True) == [1, 3]


def test_at_most_a_thousand_ids_in_a_list():
    assert len(parse_ids([str(i) for i in range(1, MAX_IDS + 1)])) == MAX_IDS
    for bad in ([str(i) for i in range(1, MAX_IDS + 2)], "1", {"1": 1}, None):
        with pytest.raises(ValueError):
            parse_ids(bad)


def test_an_inbox_event_is_a_notification_whose_data_says_so():
    event = make_event("notification", {"type": "notification", "message": "hi"}, user_id="7", inbox=True)
    assert event.inbox and json.loads(event.data) == {"type": "notification", "message": "hi", "inbox": True}
    assert not make_event("notification", {"message": "hi"}).inbox
    for name, data, flag in [
        ("update", {"message": "hi"}, True),
        ("notification", "hi", True),
        ("notification", {"message": ""}, True),
        ("notification", {"title": "no message"}, True),
        ("notification", {"message": "hi"}, "yes"),
        ("notification", {"message": "hi"}, 1),
    ]:
        with pytest.raises(ValueError):
            make_event(name, data, inbox=flag)
