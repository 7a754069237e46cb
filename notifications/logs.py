"""Logging that never shows a token: redaction for the access log and the application log.

A JWT or stream ticket in the query string (``?token=``, ``?ticket=``) is replaced by
``[redacted]`` in every line; gunicorn uses ``RedactingGunicornLogger`` (see gunicorn.conf.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
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


class AccessAtoms(Mapping[str, Any]):
    """gunicorn's access-log atoms, computed only when the format asks for them (a stream's
    connect is cheaper without building every header and environ atom), redacted and with
    quotes escaped as gunicorn escapes them; an unknown atom is ``-``."""

    _REDACTED = frozenset(("r", "q", "U", "f"))

    def __init__(self, logger: Logger, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        self.logger, self.resp, self.req, self.environ, self.request_time = logger, resp, req, environ, request_time

    def __getitem__(self, key: str) -> Any:
        value = self._value(key)
        if isinstance(value, str):
            if key in self._REDACTED or key.startswith("{"):
                value = redact(value)
            return value.replace('"', '\\"')
        return value

    def _value(self, key: str) -> Any:
        environ, resp = self.environ, self.resp
        if key.startswith("{") and len(key) > 3:
            name, kind = key[1:-2].lower(), key[-1]
            if kind == "e":
                return next((str(v) for k, v in environ.items() if k.lower() == name), "-")
            headers = getattr(self.req, "headers", ()) if kind == "i" else resp.headers
            return next((v for k, v in headers if k.lower() == name), "-")
        if key == "s":
            status = resp.status
            return status.split(None, 1)[0] if isinstance(status, str) else status
        if key == "r":
            return f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        if key == "b":
            return "-" if getattr(resp, "sent", None) is None else str(resp.sent)
        simple = _SIMPLE_ATOMS.get(key)
        if simple is not None:
            return simple(self)
        return "-"

    def __iter__(self) -> Iterator[str]:
        return iter(_SIMPLE_ATOMS)

    def __len__(self) -> int:
        return len(_SIMPLE_ATOMS)


_SIMPLE_ATOMS: dict[str, Callable[[AccessAtoms], Any]] = {
    "h": lambda a: a.environ.get("REMOTE_ADDR", "-"),
    "l": lambda a: "-",
    "u": lambda a: a.logger._get_user(a.environ) or "-",
    "t": lambda a: a.logger.now(),
    "m": lambda a: a.environ.get("REQUEST_METHOD"),
    "U": lambda a: a.environ.get("PATH_INFO"),
    "q": lambda a: a.environ.get("QUERY_STRING"),
    "H": lambda a: a.environ.get("SERVER_PROTOCOL"),
    "B": lambda a: getattr(a.resp, "sent", None),
    "f": lambda a: a.environ.get("HTTP_REFERER", "-"),
    "a": lambda a: a.environ.get("HTTP_USER_AGENT", "-"),
    "T": lambda a: a.request_time.seconds,
    "D": lambda a: a.request_time.seconds * 1_000_000 + a.request_time.microseconds,
    "M": lambda a: a.request_time.seconds * 1000 + a.request_time.microseconds // 1000,
    "L": lambda a: f"{a.request_time.seconds}.{a.request_time.microseconds:06d}",
    "p": lambda a: f"<{os.getpid()}>",
}


class RedactingGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the request line, path, query and Referer redacted in the access
    log, whose atoms are computed lazily (see ``AccessAtoms``)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> Mapping[str, Any]:
        return AccessAtoms(self, resp, req, environ, request_time)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            self.access_log.info(self.cfg.access_log_format, self.atoms(resp, req, environ, request_time))
        except Exception:
            self.error(traceback.format_exc())

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
