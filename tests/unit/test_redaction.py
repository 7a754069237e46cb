"""Redaction of log text (``notifications.logs.redact`` and ``RedactingFilter``), without gunicorn:
README "Keeping the token out of URLs" and "Operating it". Every token-like query parameter
(``token=``, ``access_token=``, ``ticket=``, ``jwt=``, in any case) and every bearer credential
becomes ``[redacted]``; text without secrets is left exactly as it was."""

from __future__ import annotations

import logging

import pytest

from notifications.logs import RedactingFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            f"GET /api/notifications/stream?token={JWT} HTTP/1.1",
            "GET /api/notifications/stream?token=[redacted] HTTP/1.1",
        ),
        (f"/stream?access_token={JWT}&lastEventId=7", "/stream?access_token=[redacted]&lastEventId=7"),
        (f"/stream?refresh_token={JWT}", "/stream?refresh_token=[redacted]"),
        ("/stream?ticket=Tk-123_abc", "/stream?ticket=[redacted]"),
        (f"/page?jwt={JWT}", "/page?jwt=[redacted]"),
        (f"/stream?TOKEN={JWT}", "/stream?TOKEN=[redacted]"),  # any case; the name keeps its case
        (f"/stream?Ticket=abc&Jwt={JWT}", "/stream?Ticket=[redacted]&Jwt=[redacted]"),
        ("/stream?channels=a&token=one&ticket=two", "/stream?channels=a&token=[redacted]&ticket=[redacted]"),
        ("/stream?token=one;ticket=two", "/stream?token=[redacted];ticket=[redacted]"),
        (f'referer="https://app.example.com/?token={JWT}"', 'referer="https://app.example.com/?token=[redacted]"'),
        (f"referer='/?token={JWT}' ok", "referer='/?token=[redacted]' ok"),
        ("/stream?token=", "/stream?token=[redacted]"),  # an empty value too
        ("/stream?token=%2Fabc%3D", "/stream?token=[redacted]"),  # percent-encoded
        (f"Authorization: Bearer {JWT}", "Authorization: Bearer [redacted]"),
        (f"authorization: bearer {JWT}", "authorization: bearer [redacted]"),
        (f"BEARER   {JWT}", "BEARER   [redacted]"),
        ("Bearer abc+/=~_-.xyz rest", "Bearer [redacted] rest"),
        (f"Bearer {JWT} and ?token={JWT}", "Bearer [redacted] and ?token=[redacted]"),
    ],
)
def test_secrets_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert JWT not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GET /healthz HTTP/1.1 200",
        "/api/notifications/stream?channels=news&lastEventId=42",
        "tokens are redacted from every log line",  # the words alone are no secret
        "the ticket office opens at 9",
        "a jwt, a token and a ticket walk into a bar",
        "bearer",
        "token = not a parameter",
        "stream closed user=42 channels=news duration=1.2 events=3 reason=gone",
        "caf\u00e9 \u2014 unicode stays as it is",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text", [f"?token={JWT}", f"Bearer {JWT}", "?ticket=x&jwt=y"])
def test_redacting_twice_changes_nothing_more(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


def record(msg: str, *args: object, name: str = "notifications", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_the_filter_redacts_the_formatted_message() -> None:
    rec = record("stream refused: %s", f"/stream?token={JWT}")
    assert RedactingFilter().filter(rec) is True
    assert rec.getMessage() == "stream refused: /stream?token=[redacted]"


def test_the_filter_leaves_a_clean_record_as_it_was() -> None:
    rec = record("stream closed user=%s", "42")
    assert RedactingFilter().filter(rec) is True
    assert (rec.msg, rec.args) == ("stream closed user=%s", ("42",))


@pytest.mark.parametrize(
    "rec",
    [
        record(f"?token={JWT}", name="gunicorn.access"),  # the access log is redacted field by field
        record(f"try: curl '?token={JWT}'", unredacted=True),  # the dev-mode demo token, meant to show
    ],
    ids=["access-log", "unredacted"],
)
def test_the_filter_passes_what_it_must_not_touch(rec: logging.LogRecord) -> None:
    assert RedactingFilter().filter(rec) is True
    assert JWT in rec.getMessage()
