"""The stream log lines (logger ``notifications.stream``) in gunicorn's error log at the default
``LOG_LEVEL=info``: every stream writes ``stream opened user=<id> channels=[...]`` once it runs
and ``stream closed user=... channels=... duration=... events=... reason=...`` when it ends, both
for a ``?token=`` stream (the fast path, in front of Flask) and for a stream that goes through
Flask (the token in an ``Authorization: Bearer`` header).

The module's server: public channels ``news,sports``, ``LOG_LEVEL=info`` set explicitly (the
test environment passes ``LOG_LEVEL`` through to gunicorn).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.support.checks import wait_until
from tests.support.server import GunicornServer
from tests.support.sse_client import SSEClient

CHANNELS = ("news", "sports")


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": ",".join(CHANNELS), "LOG_LEVEL": "info"}


def stream_lines(srv: GunicornServer, message: str, user: str) -> list[str]:
    """The error-log lines ``[INFO] <message> user=<user> ...`` written so far."""
    pattern = re.compile(rf"\[INFO\] {re.escape(message)} user={re.escape(user)} ")
    return [line for line in srv.log_path.read_text(errors="replace").splitlines() if pattern.search(line)]


def logged_channels(line: str) -> set[str]:
    m = re.search(r" channels=\[([^\]]*)\]", line)
    assert m, f"no channels=[...] in {line!r}"
    return {c.strip().strip("'\"") for c in m.group(1).split(",") if c.strip()}


def assert_opened_and_closed(srv: GunicornServer, c: SSEClient, user: str) -> None:
    c.wait_connected()
    opened = wait_until(
        lambda: stream_lines(srv, "stream opened", user), 5, f"a 'stream opened user={user}' line in {srv.log_path}"
    )
    assert len(opened) == 1, opened
    assert re.search(rf"stream opened user={re.escape(user)} channels=\[[^\]]*\]$", opened[0]), opened[0]
    assert logged_channels(opened[0]) == set(CHANNELS), opened[0]
    assert not stream_lines(srv, "stream closed", user), "closed while still open"

    c.close()
    closed = wait_until(
        lambda: stream_lines(srv, "stream closed", user), 5, f"a 'stream closed user={user}' line in {srv.log_path}"
    )
    assert len(closed) == 1, closed
    assert re.search(
        rf"stream closed user={re.escape(user)} channels=\[[^\]]*\] duration=\d+(\.\d+)? events=\d+ reason=\S+$",
        closed[0],
    ), closed[0]
    assert logged_channels(closed[0]) == set(CHANNELS), closed[0]


def test_a_token_stream_logs_opened_and_closed(
    server: GunicornServer, open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str
) -> None:
    c = open_stream(token(user), params={"channels": ",".join(CHANNELS)})
    assert_opened_and_closed(server, c, user)


def test_a_bearer_header_stream_logs_opened_and_closed(
    server: GunicornServer, open_stream: Callable[..., SSEClient], token: Callable[..., str], user: str
) -> None:
    c = open_stream(params={"channels": ",".join(CHANNELS)}, headers={"Authorization": f"Bearer {token(user)}"})
    assert_opened_and_closed(server, c, user)
