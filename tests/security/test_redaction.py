"""No token or ticket ever reaches the server's log (access and error log, one file here), whatever
the way it was sent: query string, bearer header, cookie, ticket, Referer, a malformed request."""

from __future__ import annotations

import json
import os
import socket

from tests.support.checks import assert_refused

from . import jwts
from .conftest import LogWatch, wait_for_log
from .wire import STREAM, TICKET, publish, request


def test_no_token_or_ticket_in_the_log(server, clients, token, user, publisher):
    secrets_sent: dict[str, str] = {}
    watch = LogWatch(server)
    real_token = token

    def token(sub, **kw):  # every token distinct (same-second tokens would otherwise be equal)
        return real_token(sub, jti=os.urandom(8).hex(), **kw)

    def keep(name, value):
        secrets_sent[name] = value
        return value

    # a live stream with ?token=, closed (its access line is written when it ends)
    c = server.stream(keep("query", token(user)))
    clients.append(c)
    c.wait_connected()
    c.close()
    # bearer and cookie streams
    for name, headers in (
        ("bearer", lambda t: {"Authorization": f"Bearer {t}"}),
        ("cookie", lambda t: {"Cookie": f"access_token_cookie={t}"}),
    ):
        c = server.stream(headers=headers(keep(name, token(user))))
        clients.append(c)
        c.wait_connected()
        c.close()
    # a ticket: minted with a bearer token, redeemed, then refused on reuse
    r = request(server, "POST", TICKET, b"", {"Authorization": f"Bearer {keep('ticket-bearer', token(user))}"})
    ticket = keep("ticket", r.json()["ticket"])
    c = server.stream(params={"ticket": ticket})
    clients.append(c)
    c.wait_connected()
    c.close()
    with server.stream(params={"ticket": ticket}) as again:
        assert_refused(again, 401)
    # refused tokens are secrets too (an expired token may be one typo away from a live one)
    for name, bad in (
        ("expired", token(user, ttl=-5)),
        ("forged", jwts.tamper_signature(token(user))),
        ("garbage", "s3cr3t-" + "q" * 40),
    ):
        with server.stream(keep(name, bad)) as refused:
            assert_refused(refused, 401)
    # the token in other parameters and places
    with server.stream(params=[("channels", "news"), ("token", keep("second-param", token(user)))]) as s:
        s.wait_connected()
    # bearer publishes, accepted and refused
    assert (
        publish(
            server, keep("publish", token(user, notifications={"publish": ["*"]})), {"event": "x", "data": 1}
        ).status
        == 201
    )
    assert publish(server, keep("publish-refused", token(user)), {"event": "x", "data": 1}).status == 403
    assert (
        publish(server, keep("publish-invalid", jwts.tamper_signature(token(user))), {"event": "x", "data": 1}).status
        == 401
    )
    # a token in the path as well as in the query (the access line redacts each part)
    in_path, after_path = keep("in-path", token(user)), keep("after-path", token(user))
    assert request(server, "GET", f"/api/notifications/jwt={in_path}?token={after_path}").status == 404
    # requests gunicorn itself rejects, with a token in them
    r = request(server, "GET", f"{STREAM}?token={keep('too-long', token(user))}&pad={'p' * 9000}")
    assert 400 <= r.status < 500
    with socket.create_connection((server.host, server.port), timeout=5) as raw:
        raw.sendall(f"GET {STREAM}?token={keep('bad-request-line', token(user))} HTTP/1.1 junk\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 4")

    wait_for_log(
        server,
        lambda _: (
            watch.since().count("POST /api/notifications/publish") >= 3 and "Request Line is too large" in watch.since()
        ),
    )
    log = watch.since()
    assert "token=[redacted]" in log and "ticket=[redacted]" in log, "the access log shows no redacted stream line"
    leaks = []
    for name, value in secrets_sent.items():
        parts = [value] + [p for p in value.split(".") if len(p) >= 16][-1:]  # the signature alone too
        for part in parts:
            if part in log:
                line = next(ln for ln in log.splitlines() if part in ln)
                leaks.append(f"{name}: {line[:300]}")
    assert not leaks, "secrets in the gunicorn log:\n" + "\n".join(leaks)


def test_token_in_the_referer_is_redacted(server, token, user):
    """README "Keeping the token out of URLs": a JWT in a URL ends up in ``Referer`` too. A page
    opened as ``/page?token=...`` (a magic link, an OAuth-style redirect) sends that URL as the
    stream request's Referer, and gunicorn's default access log format prints the Referer
    (``%(f)s``)."""
    watch = LogWatch(server)
    secret = token(user, jti=os.urandom(8).hex())
    with server.stream(token(user), headers={"Referer": f"https://app.example.com/page?token={secret}"}) as s:
        s.wait_connected()
    wait_for_log(server, lambda _: "app.example.com/page" in watch.since())
    leaked = [ln for ln in watch.since().splitlines() if secret.rsplit(".", 1)[1] in ln]
    assert not leaked, "a token in the Referer reaches the access log:\n" + "\n".join(leaked)


def test_json_access_lines_carry_their_fields_redacted(server_factory, token, user):
    """``LOG_FORMAT=json``: every access line is a JSON object with the request's fields (a
    stream's line written once it is live, a plain request's when it ends), the token redacted."""
    srv = server_factory.start({"LOG_FORMAT": "json"}, name="json-log")
    secret = token(user, jti=os.urandom(8).hex())
    with srv.stream(secret) as s:
        s.wait_connected()
    assert request(srv, "GET", "/healthz").status == 200

    def access_lines(text: str) -> list[dict]:
        lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
        return [e for e in lines if e.get("logger") == "gunicorn.access"]

    log = wait_for_log(srv, lambda text: len(access_lines(text)) >= 2)
    assert secret.rsplit(".", 1)[1] not in log, "the token reaches the JSON log"
    by_path = {e["path"]: e for e in access_lines(log)}
    stream = by_path[STREAM]
    assert (stream["method"], stream["status"], stream["query"]) == ("GET", 200, "token=[redacted]"), stream
    assert stream["remote"] == "127.0.0.1" and "notifications-tests" in stream["agent"], stream
    assert isinstance(stream["bytes"], int) and stream["bytes"] > 0, stream
    health = by_path["/healthz"]
    assert (health["method"], health["status"], health["query"]) == ("GET", 200, ""), health
