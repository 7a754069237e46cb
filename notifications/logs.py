"""Logging that never shows a token: redaction for the access log and the application log.

A JWT or stream ticket in the query string (``?token=``, ``?ticket=``) is replaced by
``[redacted]`` in every line; gunicorn uses ``RedactingGunicornLogger`` (see gunicorn.conf.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from gunicorn.glogging import Logger

_SECRET_PARAM = re.compile(r"(?i)(token|ticket|jwt)=[^&;\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SECRET_WORDS = ("token", "ticket", "jwt", "bearer")


def redact(text: str) -> str:
    """``text`` with every token-like query parameter (``token=``, ``access_token=``,
    ``ticket=``, ``jwt=``) and bearer credential blanked out."""
    lowered = text.lower()
    if not any(word in lowered for word in _SECRET_WORDS):
        return text  # the common case, without running the patterns
    return _BEARER.sub(r"\1[redacted]", _SECRET_PARAM.sub(r"\1=[redacted]", text))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" or getattr(record, "unredacted", False):
            return True  # access fields are redacted in ``atoms``; the dev-mode demo token is meant to show
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access-log lines carry their fields, stream lines their details."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            atoms = record.args
            entry.update(
                remote=atoms.get("h"),
                method=atoms.get("m"),
                path=redact(str(atoms.get("U", ""))),
                query=redact(str(atoms.get("q", ""))),
                status=_int(atoms.get("s")),
                bytes=_int(atoms.get("B")),
                duration_ms=_int(atoms.get("M")),
                agent=atoms.get("a"),
                referer=redact(str(atoms.get("f", ""))),
            )
        else:
            entry["message"] = redact(record.getMessage())
        details = getattr(record, "stream", None)
        if isinstance(details, dict):
            entry.update(details)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


class RedactingGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the request line, path and query redacted in the access log."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if isinstance(value, str) and (key in ("r", "q", "U", "f") or key.startswith("{")):
                atoms[key] = redact(value)
        return atoms

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        json_lines = os.environ.get("LOG_FORMAT", "").lower() == "json"
        for handler in (*self.error_log.handlers, *self.access_log.handlers):
            handler.addFilter(RedactingFilter())
            if json_lines:
                handler.setFormatter(JsonFormatter())


def attach_to_gunicorn(error_log: logging.Logger) -> None:
    """Send this package's and the app's log lines to gunicorn's error log (redacted)."""
    for name in ("notifications", "app", "wsgi"):
        logger = logging.getLogger(name)
        logger.handlers = list(error_log.handlers)
        logger.setLevel(error_log.level)
        logger.propagate = False
