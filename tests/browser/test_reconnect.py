"""The browser's own EventSource reconnection after the worker serving it is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer

from .conftest import AccessLog, events, open_demo


def test_killed_worker_browser_reconnects_with_last_event_id_and_gets_missed_events_once(
    server: GunicornServer,
    publisher: Publisher,
    new_page: Callable[[], Any],
    user: str,
    access_log: AccessLog,
) -> None:
    page = open_demo(new_page, server, f"?user={user}")
    before = publisher.notify("before the crash", user_id=user, duration=60_000)
    page.wait_for_function("id => demo.events.some(e => e.lastEventId === id)", arg=str(before))
    opened = page.evaluate("demo.states.filter(s => s.state === 'open').length")
    page.evaluate("window.firstSource = demo.source")

    # SIGKILL every worker (so surely the one holding this stream); the master respawns them.
    # The events published right after it are published while the page has no stream: its
    # retry: is 250..750 ms and no worker exists until the master has forked new ones.
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    missed = [
        publisher.notify("missed 1", notification_type="warning", user_id=user, duration=60_000),
        publisher.broadcast_update("order", "created", {"id": 77, "status": "pending", "total": 5}, user_id=user),
        publisher.publish("chat.message", {"text": "missed 3"}, user_id=user),
    ]
    page.wait_for_function("demo.state === 'reconnecting'", timeout=5000)

    # EventSource reconnects by itself (the page never makes a new one) ...
    page.wait_for_function("n => demo.states.filter(s => s.state === 'open').length > n", arg=opened, timeout=20_000)
    page.wait_for_function("id => demo.events.some(e => e.lastEventId === id)", arg=str(missed[-1]))
    after = publisher.notify("after the crash", user_id=user, duration=60_000)
    page.wait_for_function("id => demo.events.some(e => e.lastEventId === id)", arg=str(after))
    assert page.evaluate("demo.source === window.firstSource"), "the page made a new EventSource"
    assert set(server.worker_pids()).isdisjoint(workers)

    # ... and gets each missed event exactly once, in order, then live events
    got = [int(e["lastEventId"]) for e in events(page)]
    assert got == [before, *missed, after], got
    assert page.locator('#orders tr[data-id="77"]').count() == 1
    assert page.locator("#toasts .toast", has_text="missed 1").count() == 1
    # the connect message of the new stream carries the cursor the browser sent back
    connects = [
        e
        for e in page.evaluate("demo.events")
        if e["type"] == "notification" and e["data"].get("message") == "Connected to notification stream"
    ]
    assert len(connects) == 2 and connects[1]["lastEventId"] == str(before)

    # Server side: the reconnection carried the header Last-Event-ID: <before>. A stream's access
    # log line is written when it ends, so end it by closing the page.
    page.close()
    deadline = time.monotonic() + 10
    while True:
        lines = [line for _, line in access_log.requests("GET /api/notifications/stream?token=[redacted]")]
        resumed = [line for line in lines if f"last-event-id={before} " in line]
        if resumed or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the log with a deadline
    assert len(resumed) == 1, lines
