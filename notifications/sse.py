"""Server-Sent Events wire format: pure functions, no IO, no framework.

A message is a block of ``field: value`` lines ended by a blank line. ``data`` is split on every
line break so a newline inside it can never end the message early; ``id`` and ``event`` are
single-line fields, so CR and LF are removed from them.
"""

from __future__ import annotations

import random
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _single_line(value: str) -> str:
    return value.replace("\r", "").replace("\n", "")


def encode(
    *,
    event: str | None = None,
    data: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one SSE message (``data`` is an already serialised string)."""
    lines: list[str] = []
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    if id is not None:
        lines.append(f"id: {_single_line(str(id))}")
    if event is not None:
        lines.append(f"event: {_single_line(event)}")
    if data is not None:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def jittered(ms: int) -> int:
    """``ms`` ±50 %, so a crowd of clients does not reconnect in step."""
    return max(1, int(ms * random.uniform(0.5, 1.5)))
