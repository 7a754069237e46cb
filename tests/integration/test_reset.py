"""``reset`` with reason ``unknown-id``: malformed or too new last event ids, then live."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.sse_client import is_connect_message

RESET = re.compile(rb"(?:id: (\d+)\n)?event: reset\ndata: ([^\r\n]*)\n\n")


def assert_reset_then_live(c, publisher, user):
    assert c.wait_headers() == 200
    first = c.next_message()
    assert first.retry is not None, first.raw
    reset = c.next_message()
    m = RESET.fullmatch(reset.raw)
    assert m, f"expected a reset block right after retry, got {reset.raw!r}"
    assert json.loads(m.group(2)) == {"type": "reset", "reason": "unknown-id"}
    connect = c.next_message()
    assert is_connect_message(connect), connect.raw
    # the cursor handed out must be a real position, never the bogus id
    cursor = int(connect.id or -1)
    assert 0 <= cursor <= publisher.newest
    if m.group(1) is not None:
        assert int(m.group(1)) <= publisher.newest
    live = publisher.notify("still works", user_id=user)
    c.wait_for_id(live)
    # anything in between is an event published just before connecting, after the cursor
    between = [m for m in c.messages if m.is_event and m.type != "heartbeat"][2:]
    assert all(cursor < int(m.id or -1) <= live for m in between), [m.raw for m in between]
    assert not c.closed


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "1e3", "0x10", "12abc"])
def test_malformed_header(open_stream, token, user, publisher, bad):
    publisher.notify("something to be newest")
    assert_reset_then_live(open_stream(token(user), headers={"Last-Event-ID": bad}), publisher, user)


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "١٢"])
def test_malformed_query_parameter(open_stream, token, user, publisher, bad):
    assert_reset_then_live(open_stream(token(user), params={"lastEventId": bad}), publisher, user)


@pytest.mark.parametrize("ahead", [1, 1000, 10**30])
def test_too_new_id(open_stream, token, user, publisher, ahead):
    newest = publisher.notify("newest")
    c = open_stream(token(user), headers={"Last-Event-ID": str(newest + ahead)})
    assert_reset_then_live(c, publisher, user)


def test_valid_id_has_no_reset(open_stream, token, user, publisher):
    e1 = publisher.notify("one")
    e2 = publisher.notify("two")
    c = open_stream(token(user), headers={"Last-Event-ID": str(e1)})
    c.wait_for_id(e2)
    assert not [m for m in c.messages if m.type == "reset"]
