"""Timestamps for the wire and the logs, rendered at most once a second.

A stream's ``Date`` header and its access line carry the time to the second; formatting it for
each of thousands of connects a second is measurable work, so the text is kept for the second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate


class SecondClock:
    """``render(now)`` of the current second, recomputed only when the second changes."""

    __slots__ = ("render", "second", "text")

    def __init__(self, render: Callable[[int], str]) -> None:
        self.render = render
        self.second = -1
        self.text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, self.render(now)
        return self.text


def _http_date(now: int) -> str:
    return formatdate(now, usegmt=True)


def _common_log_time(now: int) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))


http_date = SecondClock(_http_date)
"""The ``Date`` header value (RFC 9110 IMF-fixdate)."""

common_log_time = SecondClock(_common_log_time)
"""The access log's ``%(t)s`` (Apache common log format), as gunicorn writes it."""
