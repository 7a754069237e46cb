"""``logs.SecondFormatter`` writes exactly what ``logging.Formatter`` writes with the same format
and ``datefmt`` (gunicorn's), while rendering the time once a second."""

from __future__ import annotations

import logging

from notifications.logs import SecondFormatter

FMT = r"%(asctime)s [%(process)d] [%(levelname)s] %(message)s"  # gunicorn's error log
DATEFMT = r"[%Y-%m-%d %H:%M:%S %z]"


def record(created: float, message: str) -> logging.LogRecord:
    rec = logging.LogRecord("notifications.stream", logging.INFO, "(stream)", 0, message, None, None)
    rec.created = created
    return rec


def test_lines_match_the_plain_formatter_across_seconds():
    plain, cached = logging.Formatter(FMT, DATEFMT), SecondFormatter(FMT, DATEFMT)
    for created in (1_800_000_000.1, 1_800_000_000.9, 1_800_000_001.0, 1_800_000_001.5, 1_800_000_000.2):
        rec = record(created, f"stream opened at {created}")
        assert cached.format(rec) == plain.format(rec)


def test_without_a_datefmt_it_is_the_plain_formatter():
    plain, cached = logging.Formatter(FMT), SecondFormatter(FMT)
    rec = record(1_800_000_000.123, "x")
    assert cached.format(rec) == plain.format(rec)  # milliseconds included, as logging does
