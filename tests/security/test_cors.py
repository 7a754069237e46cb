"""CORS on the main server: ``NOTIFICATIONS_CORS_ORIGINS="https://app.example.com,https://*.example.org"``.

Listed origins are echoed with credentials allowed, never ``*`` together with credentials; the
wildcard matches subdomains only; any other origin gets no ``Access-Control-Allow-Origin``."""

from __future__ import annotations

import pytest

from .wire import PUBLISH, STREAM, TICKET, request

ALLOWED = ["https://app.example.com", "https://a.example.org", "https://deep.sub.example.org"]
DENIED = [
    "https://example.org.evil.com",
    "https://evilexample.org",
    "https://a.example.org.evil.com",
    "https://app.example.com.evil.com",
    "https://evil.com/https://a.example.org",
    "http://app.example.com",  # other scheme
    "http://a.example.org",
    "https://example.org",  # the bare domain is not a subdomain
    "https://example.com",
    "https://evil-app.example.com",
    "null",
    "https://a.example.orgx",
    "https://a_b.example.org.",
]


def stream_headers(server, clients, tok, origin, **kwargs):
    c = server.stream(tok, headers={"Origin": origin, **kwargs})
    clients.append(c)
    assert c.wait_headers() == 200
    return c


@pytest.mark.parametrize("origin", ALLOWED)
def test_allowed_origin_is_echoed_with_credentials(server, clients, token, user, origin):
    c = stream_headers(server, clients, token(user), origin)
    c.wait_connected()
    assert c.headers_all("Access-Control-Allow-Origin") == [origin]
    assert c.header("Access-Control-Allow-Credentials") == "true"
    assert "origin" in (c.header("Vary") or "").lower()


@pytest.mark.parametrize("origin", DENIED)
def test_foreign_origin_gets_no_allow_origin(server, clients, token, user, origin):
    c = stream_headers(server, clients, token(user), origin)
    assert c.header("Access-Control-Allow-Origin") is None, (origin, c.header_list)
    assert c.header("Access-Control-Allow-Credentials") is None


def test_refused_stream_carries_cors_headers_for_allowed_origin(server, clients):
    """The page must be able to read the refusal's error event (say, to refresh its token)."""
    c = stream_headers(server, clients, "not-a-token", "https://app.example.com")
    assert c.header("Access-Control-Allow-Origin") == "https://app.example.com"
    c.wait_closed()


def test_never_star_with_credentials(server, clients, token, user):
    for origin in [*ALLOWED, *DENIED, "*"]:
        c = stream_headers(server, clients, token(user), origin)
        acao = c.headers_all("Access-Control-Allow-Origin")
        if c.header("Access-Control-Allow-Credentials") == "true":
            assert acao and "*" not in acao and len(acao) == 1, (origin, c.header_list)
        c.close()


@pytest.mark.parametrize(
    "path, method, headers",
    [
        (STREAM, "GET", "authorization"),
        (STREAM, "GET", "authorization, last-event-id, cache-control"),
        (PUBLISH, "POST", "authorization, content-type"),
        (TICKET, "POST", "Authorization"),
    ],
)
def test_preflight_from_allowed_origin(server, path, method, headers):
    r = request(
        server,
        "OPTIONS",
        path,
        headers={
            "Origin": "https://a.example.org",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    assert r.status in (200, 204), (r.status, r.body)
    assert r.header("Access-Control-Allow-Origin") == "https://a.example.org"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    allowed_headers = {h.strip().lower() for h in (r.header("Access-Control-Allow-Headers") or "").split(",")}
    assert {h.strip().lower() for h in headers.split(",")} <= allowed_headers, r.headers
    assert method in (r.header("Access-Control-Allow-Methods") or ""), r.headers


@pytest.mark.parametrize("origin", ["https://example.org.evil.com", "https://evil.com", "null"])
def test_preflight_from_foreign_origin_is_not_allowed(server, origin):
    r = request(
        server,
        "OPTIONS",
        PUBLISH,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status < 500
    assert r.header("Access-Control-Allow-Origin") is None, r.headers
    assert r.header("Access-Control-Allow-Credentials") is None


def test_cors_is_not_applied_outside_the_blueprint(server):
    r = request(server, "GET", "/healthz", headers={"Origin": "https://app.example.com"})
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") is None


def test_publish_answer_carries_cors_only_for_allowed_origin(server, token, user):
    tok = token(user, notifications={"publish": ["*"]})
    for origin, expected in (("https://app.example.com", "https://app.example.com"), ("https://evil.com", None)):
        r = request(
            server,
            "POST",
            PUBLISH,
            b'{"event":"x","data":1}',
            {"Authorization": f"Bearer {tok}", "Content-Type": "application/json", "Origin": origin},
        )
        assert r.status == 201
        assert r.header("Access-Control-Allow-Origin") == expected, (origin, r.headers)
