"""CORS for the notification endpoints, through flask-cors.

``NOTIFICATIONS_CORS_ORIGINS`` is a comma-separated allowlist: exact origins
(``https://app.example.com``) and wildcard subdomains (``https://*.example.com``). Credentials
(cookies) are allowed for listed origins, which are echoed back one by one: never ``*`` together
with ``Access-Control-Allow-Credentials``. A lone ``*`` allows any origin without credentials.
"""

from __future__ import annotations

import re

from flask import Flask
from flask_cors import CORS

from .config import ConfigError

_ORIGIN = re.compile(r"https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?")


def parse_origins(raw: str) -> list[str | re.Pattern[str]]:
    """Exact origins as strings, wildcard subdomains as anchored patterns."""
    origins: list[str | re.Pattern[str]] = []
    for entry in (part.strip().rstrip("/") for part in raw.split(",")):
        if not entry:
            continue
        if not _ORIGIN.fullmatch(entry):
            raise ConfigError(
                f"NOTIFICATIONS_CORS_ORIGINS: {entry!r} is not an origin like https://app.example.com "
                "or https://*.example.com"
            )
        if "*." in entry:
            scheme, rest = entry.split("://", 1)
            suffix = re.escape(rest[2:])
            origins.append(re.compile(rf"^{scheme}://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.{suffix}$"))
        else:
            origins.append(entry)
    return origins


def install(app: Flask, raw: str, url_prefix: str) -> None:
    """Answer CORS requests (preflights included) on the notification endpoints."""
    if not raw.strip():
        return
    any_origin = raw.strip() == "*"
    CORS(
        app,
        resources={rf"{url_prefix}/*": {}},
        origins="*" if any_origin else parse_origins(raw),
        supports_credentials=not any_origin,
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Cache-Control"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
        vary_header=True,
    )
