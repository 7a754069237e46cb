"""Logging that never shows a token: redaction for the access log and the application log.

A JWT or stream ticket in the query string (``?token=``, ``?ticket=``) is replaced by
``[redacted]`` in every line; gunicorn uses ``RedactingGunicornLogger`` (see gunicorn.conf.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
from typing import Any

from gunicorn.glogging import Logger

from .clock import common_log_time

_SECRET_PARAM = re.compile(r"(?i)(token|ticket|jwt)=[^&;\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with every token-like query parameter (``token=``, ``access_token=``,
    ``ticket=``, ``jwt=``) and bearer credential blanked out."""
    lowered = text.lower()  # the patterns run only when their words appear
    if "token" in lowered or "ticket" in lowered or "jwt" in lowered:
        text = _SECRET_PARAM.sub(r"\1=[redacted]", text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1[redacted]", text)
    return text


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


class SecondFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose ``asctime`` (to the second, as gunicorn's ``datefmt`` has it)
    is rendered once a second rather than for every line: a stream writes two lines."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is None or "%f" in datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(datefmt, self.converter(second))
        return self._text


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


class AccessAtoms(dict[str, Any]):
    """gunicorn's access-log atoms, redacted and with quotes escaped as gunicorn escapes them.

    The plain atoms are built at once; header and environ atoms (``{name}i``, ``{name}o``,
    ``{name}e``) only when the format asks for one, instead of one per header and environ key on
    every request (most of the cost of a stream's connect); an unknown atom is ``-``."""

    def __init__(self, logger: Logger, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        self.resp, self.req, self.environ = resp, req, environ
        status = resp.status
        elapsed_us = request_time.seconds * 1_000_000 + request_time.microseconds
        sent = getattr(resp, "sent", None)
        get = environ.get
        uri, query = environ["RAW_URI"], get("QUERY_STRING") or ""
        clean_query = redact(query)  # where the token is: redacted once for both atoms
        if query and uri.endswith(query):
            uri = redact(uri[: len(uri) - len(query)]) + clean_query
        else:
            uri = redact(uri)
        super().__init__(
            h=get("REMOTE_ADDR", "-"),
            l="-",
            t=common_log_time(),
            r=_quoted(f"{environ['REQUEST_METHOD']} {uri} {environ['SERVER_PROTOCOL']}"),
            s=status.split(None, 1)[0] if isinstance(status, str) else status,
            m=get("REQUEST_METHOD"),
            U=_quoted(redact(get("PATH_INFO") or "")),
            q=_quoted(clean_query),
            H=get("SERVER_PROTOCOL"),
            b="-" if sent is None else str(sent),
            B=sent,
            f=_quoted(redact(get("HTTP_REFERER", "-"))),
            a=_quoted(get("HTTP_USER_AGENT", "-")),
            T=request_time.seconds,
            D=elapsed_us,
            M=elapsed_us // 1000,
            L=f"{request_time.seconds}.{request_time.microseconds:06d}",
            p=f"<{os.getpid()}>",
        )
        self["u"] = logger._get_user(environ) or "-" if "HTTP_AUTHORIZATION" in environ else "-"

    def __missing__(self, key: str) -> Any:
        if not (key.startswith("{") and len(key) > 3):
            return "-"
        name, kind = key[1:-2].lower(), key[-1]
        if kind == "e":
            found = next((str(v) for k, v in self.environ.items() if k.lower() == name), "-")
        else:
            headers = getattr(self.req, "headers", ()) if kind == "i" else self.resp.headers
            found = next((v for k, v in headers if k.lower() == name), "-")
        return _quoted(redact(found))


def _quoted(value: str) -> str:
    return value.replace('"', '\\"')


class RedactingGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the request line, path, query and Referer redacted in the access
    log, whose header and environ atoms are computed only when asked for (see ``AccessAtoms``)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        return AccessAtoms(self, resp, req, environ, request_time)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        log = self.access_log
        try:
            if log.isEnabledFor(logging.INFO):  # a record of its own: no caller lookup for it
                atoms = (self.atoms(resp, req, environ, request_time),)
                fmt = self.cfg.access_log_format
                log.handle(log.makeRecord(log.name, logging.INFO, "(access)", 0, fmt, atoms, None))
        except Exception:
            self.error(traceback.format_exc())

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # In a gevent worker every request's greenlet counts as a thread: looking it up for each
        # log record builds a dummy thread per request and names nothing useful.
        logging.logThreads = False
        logging.logMultiprocessing = False  # every worker is "MainProcess"; the pid is %(process)d
        json_lines = os.environ.get("LOG_FORMAT", "").lower() == "json"
        for handler in (*self.error_log.handlers, *self.access_log.handlers):
            handler.addFilter(RedactingFilter())
            if json_lines:
                handler.setFormatter(JsonFormatter())
            elif type(handler.formatter) is logging.Formatter:
                handler.setFormatter(SecondFormatter(handler.formatter._fmt, handler.formatter.datefmt))


def attach_to_gunicorn(error_log: logging.Logger) -> None:
    """Send this package's and the app's log lines to gunicorn's error log (redacted)."""
    for name in ("notifications", "app", "wsgi"):
        logger = logging.getLogger(name)
        logger.handlers = list(error_log.handlers)
        logger.setLevel(error_log.level)
        logger.propagate = False
