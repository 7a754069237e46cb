"""The CORS allowlist (``notifications.cors``), parsed and applied without a server: README
"CORS". ``NOTIFICATIONS_CORS_ORIGINS`` is comma-separated exact origins and wildcard subdomains
(``https://*.example.com``), allowed with credentials and echoed back; a lone ``*`` allows any
origin without credentials; anything else in the list is a ``ConfigError`` naming the key."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from notifications.config import ConfigError
from notifications.cors import install, parse_origins

PREFIX = "/api/notifications"


def allows(origins: list[str | re.Pattern[str]], origin: str) -> bool:
    """As flask-cors matches a request's Origin: patterns with ``match``, strings literally."""
    return any(o.match(origin) if isinstance(o, re.Pattern) else o.lower() == origin.lower() for o in origins)


# ---------------------------------------------------------------------------------- the list


@pytest.mark.parametrize(
    "raw, exact",
    [
        ("https://app.example.com", ["https://app.example.com"]),
        ("https://app.example.com/", ["https://app.example.com"]),  # a trailing slash is dropped
        ("http://127.0.0.1:8080", ["http://127.0.0.1:8080"]),
        (
            " https://a.example.com , ,http://b.example.com:3000 ",
            ["https://a.example.com", "http://b.example.com:3000"],
        ),
        ("https://a.example.com,https://a.example.com", ["https://a.example.com", "https://a.example.com"]),
        ("", []),
        (" , ", []),
    ],
)
def test_exact_origins_are_kept_as_strings(raw: str, exact: list[str]) -> None:
    assert parse_origins(raw) == exact


def test_a_wildcard_becomes_one_anchored_pattern_in_its_place() -> None:
    parsed = parse_origins("https://app.example.com,https://*.example.org,http://localhost:5173")
    assert len(parsed) == 3
    assert parsed[0] == "https://app.example.com" and parsed[2] == "http://localhost:5173"
    assert isinstance(parsed[1], re.Pattern)


@pytest.mark.parametrize(
    "wildcard, origin, allowed",
    [
        ("https://*.example.com", "https://app.example.com", True),
        ("https://*.example.com", "https://a.b.example.com", True),  # any depth of subdomain
        ("https://*.example.com", "https://app-1.example.com", True),
        ("https://*.example.com", "https://example.com", False),  # the domain itself is not a subdomain
        ("https://*.example.com", "http://app.example.com", False),  # the scheme must match
        ("https://*.example.com", "https://app.example.com.evil.net", False),  # anchored at the end
        ("https://*.example.com", "https://evil.net/.example.com", False),
        ("https://*.example.com", "https://evilexample.com", False),
        ("https://*.example.com", "https://app.exampleXcom", False),  # the dots are literal
        ("https://*.example.com", "https://app.example.com:8443", False),  # no port unless listed
        ("https://*.example.com", "https://.example.com", False),
        ("https://*.example.com", "https://a_b.example.com", False),
        ("https://*.example.com:8443", "https://app.example.com:8443", True),
        ("https://*.example.com:8443", "https://app.example.com", False),
        ("http://*.localhost", "http://app.localhost", True),
    ],
)
def test_wildcard_subdomains(wildcard: str, origin: str, allowed: bool) -> None:
    assert allows(parse_origins(wildcard), origin) is allowed


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("https://app.example.com", True),
        ("https://APP.example.com", True),  # origins compare case-insensitively
        ("https://app.example.com.evil.net", False),
        ("https://evil.app.example.com", False),  # an exact origin is no wildcard
        ("http://app.example.com", False),
        ("https://app.example.com:443", False),
    ],
)
def test_an_exact_origin_matches_itself_only(origin: str, allowed: bool) -> None:
    assert allows(parse_origins("https://app.example.com"), origin) is allowed


@pytest.mark.parametrize(
    "entry",
    [
        "app.example.com",  # no scheme
        "ftp://app.example.com",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "*",  # alone it means any origin (see install); in a list it is no origin
        "https://*",
        "https://*example.com",
        "https://a.*.example.com",
        "https://*.*.example.com",
        "*.example.com",
        "https://app.example.com:123456",
        "https://user@app.example.com",
        "https://app example.com",
        "null",
    ],
)
def test_what_is_not_an_origin_is_a_config_error_naming_the_key(entry: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_origins(f"https://fine.example.com,{entry}")
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert "NOTIFICATIONS_CORS_ORIGINS" in message
    assert repr(entry) in message


# ---------------------------------------------------------------------------------- applied


def cors_app(raw: str) -> Flask:
    app = Flask(__name__)

    @app.get(f"{PREFIX}/stream")
    def stream() -> str:
        return "ok"

    @app.get("/elsewhere")
    def elsewhere() -> str:
        return "ok"

    install(app, raw, PREFIX)
    return app


def answer(app: Flask, origin: str, path: str = f"{PREFIX}/stream") -> dict[str, str | None]:
    response = app.test_client().get(path, headers={"Origin": origin})
    return {
        "origin": response.headers.get("Access-Control-Allow-Origin"),
        "credentials": response.headers.get("Access-Control-Allow-Credentials"),
    }


@pytest.mark.parametrize(
    "raw, origin, expected",
    [
        (
            "https://app.example.com",
            "https://app.example.com",
            {"origin": "https://app.example.com", "credentials": "true"},
        ),
        ("https://app.example.com", "https://other.example.com", {"origin": None, "credentials": None}),
        (
            "https://*.example.com",
            "https://a.b.example.com",
            {"origin": "https://a.b.example.com", "credentials": "true"},
        ),
        ("https://*.example.com", "https://example.com", {"origin": None, "credentials": None}),
        # a lone *: any origin is allowed (echoed back), and never with credentials
        ("*", "https://anyone.example.net", {"origin": "https://anyone.example.net", "credentials": None}),
        (" * ", "http://127.0.0.1:9999", {"origin": "http://127.0.0.1:9999", "credentials": None}),
        ("", "https://app.example.com", {"origin": None, "credentials": None}),  # empty: no CORS at all
    ],
)
def test_install_echoes_allowed_origins_with_credentials(
    raw: str, origin: str, expected: dict[str, str | None]
) -> None:
    assert answer(cors_app(raw), origin) == expected


def test_install_covers_only_the_notification_endpoints() -> None:
    app = cors_app("https://app.example.com")
    assert answer(app, "https://app.example.com", "/elsewhere") == {"origin": None, "credentials": None}


def test_install_refuses_a_bad_list_at_once() -> None:
    with pytest.raises(ConfigError, match="NOTIFICATIONS_CORS_ORIGINS"):
        cors_app("https://app.example.com,example.org")
