"""A refused stream: the page sees the error data, and the browser retries only after the long
refusal ``retry:`` (NOTIFICATIONS_REFUSAL_RETRY_MS=3000, jittered 1500..4500 ms), never in a loop."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from tests.support.server import GunicornServer
from tests.support.tokens import mint

from .conftest import REFUSAL_RETRY_MS, AccessLog

MIN_GAP = 1.4  # seconds: the shortest refusal retry is 1.5 s (3000 ms -50 %)

PROBE_JS = """
([name, url]) => {
  window.probes = window.probes || {};
  const rec = (window.probes[name] = { errors: [], drops: [], opens: [] });
  const es = new EventSource(url);
  (window.sources = window.sources || {})[name] = es;
  es.onopen = () => rec.opens.push(performance.now());
  es.addEventListener("error", (e) => {
    if (e instanceof MessageEvent) rec.errors.push({ data: JSON.parse(e.data), at: performance.now() });
    else rec.drops.push({ readyState: es.readyState, at: performance.now() });
  });
}
"""


def test_refused_stream_shows_error_and_retries_only_after_the_long_retry(
    server: GunicornServer, new_page: Callable[[], Any], access_log: AccessLog
) -> None:
    page = new_page()
    page.goto(f"http://{server.host}:{server.port}/healthz")
    base = "/api/notifications/stream?token="
    bad_token = "not-a-valid-" + secrets.token_hex(8)
    expired_token = mint(server.secret, "someone", ttl=-60)
    probes = {
        "bad": (f"probe=bad-{secrets.token_hex(4)}", "invalid token", bad_token),
        "expired": (f"probe=expired-{secrets.token_hex(4)}", "token expired", expired_token),
    }
    for name, (marker, _, token) in probes.items():
        page.evaluate(PROBE_JS, [name, f"{base}{token}&{marker}"])

    # the server saw one request for each (the log is polled every 20 ms from now on, so the
    # times it was seen are close to the times the requests ended)
    firsts = {}
    for name, (marker, _, _) in probes.items():
        firsts[name] = wait_for_requests(access_log, marker, 1, timeout=5)[0][0]

    # the page sees each refusal's error data
    page.wait_for_function("Object.values(probes).every(p => p.errors.length >= 1)")
    recorded = page.evaluate("probes")
    for name, (_, message, _) in probes.items():
        assert recorded[name]["errors"][0]["data"] == {"error": message, "code": 401}

    # none again before the shortest refusal retry ...
    while (now := time.monotonic()) < max(firsts.values()) + MIN_GAP:
        for name, (marker, _, _) in probes.items():
            if now < firsts[name] + MIN_GAP:
                assert len(access_log.requests(marker)) == 1, f"{name}: retried before {MIN_GAP}s"
        time.sleep(0.02)  # sampling the log during a fixed quiet window

    # ... and a second one does arrive after it: the browser has not given up
    limit = REFUSAL_RETRY_MS * 1.5 / 1000 + 3
    for name, (marker, _, _) in probes.items():
        seen = wait_for_requests(access_log, marker, 2, timeout=limit)
        gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:], strict=False)]
        assert all(gap >= MIN_GAP for gap in gaps), f"{name}: requests {gaps}s apart"
        for _, line in seen:
            assert '" 200 ' in line, line  # refusals are 200 streams, so EventSource keeps going
    page.wait_for_function("Object.values(probes).every(p => p.errors.length >= 2)")
    recorded = page.evaluate("probes")
    for name in probes:
        rec = recorded[name]
        gaps = [(b["at"] - a["at"]) / 1000 for a, b in zip(rec["errors"], rec["errors"][1:], strict=False)]
        assert all(gap >= MIN_GAP for gap in gaps), f"{name}: error events {gaps}s apart"
        # between refusals the browser is CONNECTING (0): it waits for retry, it did not close
        assert rec["drops"] and all(d["readyState"] == 0 for d in rec["drops"]), rec["drops"]
    page.evaluate("Object.values(sources).forEach(s => s.close())")

    # the tokens never reach the log
    log = server.log_path.read_text(errors="replace")
    assert bad_token not in log and expired_token not in log


def wait_for_requests(log: AccessLog, marker: str, count: int, timeout: float) -> list[tuple[float, str]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = log.requests(marker)
        if len(seen) >= count:
            return seen
        assert time.monotonic() < deadline, f"{len(seen)} requests with {marker} after {timeout}s, expected {count}"
        time.sleep(0.02)  # polling the log with a deadline
