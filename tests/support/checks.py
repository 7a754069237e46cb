"""Assertions shared by the integration tests."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from .sse_client import Message, SSEClient, is_connect_message

BLOCK = re.compile(rb"id: (\d+)\nevent: ([A-Za-z0-9_.:-]+)\ndata: ([^\r\n]*)\n\n")
REFUSAL = re.compile(rb"retry: (\d+)\n\nevent: error\ndata: ([^\r\n]*)\n\n")
RETRY_BLOCK = re.compile(rb"retry: (\d+)\n\n")
PUBLISH = "/api/notifications/publish"


def assert_event_block(msg: Message, event: str, expected_data: Any, event_id: int | None = None) -> None:
    """The block on the wire is exactly ``id: N\\nevent: NAME\\ndata: <compact json>\\n\\n``."""
    m = BLOCK.fullmatch(msg.raw)
    assert m, f"not an 'id/event/data' block: {msg.raw!r}"
    assert m.group(2).decode() == event, msg.raw
    if event_id is not None:
        assert int(m.group(1)) == event_id, msg.raw
    text = m.group(3).decode("utf-8")
    assert json.loads(text) == expected_data, msg.raw
    assert_compact(text)


def assert_compact(text: str) -> None:
    """JSON without optional whitespace (key order is free): same length as a compact re-dump."""
    value = json.loads(text)
    candidates = {len(json.dumps(value, separators=(",", ":"), ensure_ascii=flag)) for flag in (True, False)}
    assert len(text) in candidates, f"data is not compact JSON: {text!r}"


def events_before(client: SSEClient, sentinel_id: int) -> list[Message]:
    """Wait for the event ``sentinel_id`` and return the non-heartbeat events received before it."""
    client.wait_for_id(sentinel_id)
    out = []
    for m in client.messages:
        if m.is_event and m.type != "heartbeat" and m.id == str(sentinel_id):
            break
        if m.is_event and m.type != "heartbeat" and not is_connect_message(m):
            out.append(m)
    return out


def assert_never_received(client: SSEClient, sentinel_id: int, forbidden: Iterable[int]) -> None:
    """Events are delivered in id order, so once ``sentinel_id`` (published after the forbidden
    ones) has arrived, none of ``forbidden`` may have arrived, now or later."""
    forbidden_ids = {str(i) for i in forbidden}
    events_before(client, sentinel_id)
    seen = [m for m in client.messages if m.is_event and m.type != "heartbeat" and m.id in forbidden_ids]
    assert not seen, f"stream {client.name!r} received events not meant for it: {[m.raw for m in seen]}"


def delivered_ids(client: SSEClient, after: int = 0) -> list[int]:
    """Ids of the non-heartbeat, non-connect events received so far with id > after."""
    return [
        m.int_id
        for m in client.messages
        if m.is_event
        and m.type not in ("heartbeat", "reset", "error")
        and not is_connect_message(m)
        and m.id is not None
        and int(m.id) > after
    ]


def assert_refused(client: SSEClient, code: int, status: int = 200) -> dict[str, Any]:
    """A refusal: ``retry: <30000 ±50 %>``, one ``error`` event with ``code``, then the end."""
    assert client.wait_headers() == status
    assert (client.header("Content-Type") or "").lower().startswith("text/event-stream")
    client.wait_closed(timeout=10)
    m = REFUSAL.fullmatch(client.raw)
    assert m, f"refusal body is not 'retry, error event, end': {client.raw!r}"
    retry = int(m.group(1))
    assert 15000 <= retry <= 45000, f"refusal retry {retry} outside 30000 ±50 %"
    data = json.loads(m.group(2))
    assert data["code"] == code, data
    assert isinstance(data["error"], str) and data["error"], data
    return data


def post(server: Any, bearer: str, payload: Any) -> tuple[int, str, Any]:
    """``POST /publish`` with ``Authorization: Bearer``; the status, content type and JSON body."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(
            "POST",
            PUBLISH,
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
        )
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheader("Content-Type") or "", json.loads(body)
    finally:
        conn.close()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)  # polling interval of a condition with a deadline


def fresh_window(min_left: float = 10.0) -> None:
    """Rate windows are fixed (start at whole minutes): start a burst with enough time left."""
    left = 60 - time.time() % 60
    if left < min_left:
        time.sleep(left + 0.3)  # waiting for the clock: the next window is what is needed
