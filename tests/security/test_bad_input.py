"""Malformed input, table-driven, against the main server while two live streams (one per worker)
stay connected: after every attack the live streams must still receive a freshly published event,
and the log must show no traceback and no 5xx.

Expected answers: the stream's documented codes (README "The stream": ``reset`` unknown-id for a bad last
event id; 400/401/403 refusals; 405 for other methods), the publish endpoint's (README: 400,
401, 403, 413, 422), and for requests over gunicorn's own limits (request line 4094 bytes, a header
8190 bytes, 100 headers) gunicorn's 4xx: those never reach the app.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.tokens import mint

from .conftest import MAX_PAYLOAD_BYTES, LogWatch
from .wire import PUBLISH, STREAM, Attempt, Live, attempt, publish, request


@pytest.fixture(scope="module")
def live(server, publisher, jwt_secret):
    lv = Live(server, publisher, jwt_secret, "live-" + os.urandom(3).hex())
    yield lv
    lv.close()


@pytest.fixture(scope="module")
def watch(server):
    return LogWatch(server)


@pytest.fixture
def guarded(live, watch):
    """Run an attack; then the live streams still receive and the log is clean."""

    def run(what: str, fn: Callable[[], Any]) -> Any:
        watch.mark()
        result = fn()
        live.check(what)
        watch.assert_clean(what)
        return result

    return run


def q(value: str) -> str:
    return quote(value, safe="")


# ------------------------------------------------------------------ Last-Event-ID


LAST_EVENT_IDS = {
    "letters": ("header", "abc"),
    "negative": ("header", "-1"),
    "exponent": ("header", "1e3"),
    "decimal": ("header", "1.5"),
    "plus": ("header", "+5"),
    "hex": ("header", "0x10"),
    "empty": ("header", ""),
    "twenty-digits": ("header", "9" * 20),
    "above-bigint": ("header", "9223372036854775808"),
    "newer-than-newest": ("header", "999999999"),
    "4000-digits": ("header", "9" * 4000),
    "latin1-superscripts": ("header", "\u00b2\u00b3"),
    "arabic-indic-digits": ("query", "\u0661\u0662"),
    "fullwidth-digits": ("query", "\uff11\uff12"),
    "nul": ("query", "1\x00"),
    "sql": ("query", "1; DROP TABLE notification_events"),
}


@pytest.mark.parametrize("case", list(LAST_EVENT_IDS))
def test_malformed_last_event_id_resets_and_goes_live(server, guarded, token, publisher, user, case):
    where, value = LAST_EVENT_IDS[case]

    def go() -> None:
        if where == "header":  # the SSE client writes headers as latin-1, as browsers may
            c = server.stream(token(user), headers={"Last-Event-ID": value})
        else:
            c = server.stream(token(user), params={"lastEventId": value})
        with c:
            assert c.wait_headers() == 200
            first = c.wait_for(lambda m: m.is_event and m.type != "heartbeat", what="first event")
            assert first.type == "reset" and first.json() == {"type": "reset", "reason": "unknown-id"}, first.raw
            c.wait_connected()
            event_id = publisher.notify("after reset", user_id=user)
            c.wait_for_id(event_id)

    guarded(f"Last-Event-ID {case}", go)


def test_last_event_id_over_gunicorns_header_limit(server, guarded, token, user):
    """10,000 characters: over gunicorn's 8190-byte header limit, so gunicorn answers, not the app
    (no ``reset``: the request never reaches it). Documented here so the limit is known."""

    def go() -> None:
        got = attempt(server, f"{STREAM}?token={token(user)}", headers={"Last-Event-ID": "9" * 10_000})
        assert got.status is not None and 400 <= got.status < 500, (got.status, got.body[:200])

    guarded("Last-Event-ID 10,000 chars", go)


# ------------------------------------------------------------------ userId, channels, query strings


def refused_with(got: Attempt, code: int) -> dict[str, Any]:
    assert got.status == 200 and got.body.startswith(b"retry: "), (got.status, got.body[:200])
    assert got.ended, "a refusal must end the response"
    error = got.error
    assert error is not None and error["code"] == code, got.body
    events = [m for m in got.messages if m.is_event]
    assert len(events) == 1, f"a refusal sends exactly one event: {got.body!r}"
    return error


STREAM_CASES: dict[str, tuple[str, int | str]] = {
    # name: (query after ?token=..., expected: an error code, "live", or "gunicorn-4xx")
    "userId-empty": ("&userId=", 400),
    "userId-257-chars": ("&userId=" + "u" * 257, 400),
    "userId-nul": ("&userId=a%00b", 400),
    "userId-10000-chars": ("&userId=" + "u" * 10_000, "gunicorn-4xx"),
    "userId-crlf-injection": ("&userId=" + q('x\n\nevent: notification\ndata: {"pwned":1}\n'), 403),
    "userId-json-injection": ("&userId=" + q('","code":200,"x":"'), 403),
    "userId-twice": ("&userId=other&userId={user}", 403),
    "userId-unicode": ("&userId=" + q("\u202eadmin"), 403),
    "channels-space": ("&channels=a%20b", 400),
    "channels-129": ("&channels=" + "c" * 129, 400),
    "channels-51": ("&channels=" + ",".join(f"news{i}" for i in range(51)), 400),
    "channels-empty-names": ("&channels=,,", 400),
    "channels-trailing-comma": ("&channels=news,", 400),
    "channels-nul": ("&channels=news%00", 400),
    "channels-newline": ("&channels=" + q("news\nevent: x"), 400),
    "channels-rtl": ("&channels=%E2%80%AE", 400),
    "channels-invalid-utf8": ("&channels=%FF%FE", 400),
    "channels-percent-garbage": ("&channels=%zz", 400),
    "channels-empty": ("&channels=", "live"),
    "channels-twice": ("&channels=news&channels=secret", "live"),
    "garbage-percent": ("&%zz=%zz", "live"),
    "garbage-ampersands": ("&&&&", "live"),
    "garbage-equals": ("&=&==&=x", "live"),
    "garbage-brackets": ("&channels[]=x&userId[]=y", "live"),
    "garbage-invalid-utf8-key": ("&%FF%FE=1", "live"),
    "garbage-many-params": ("&" + "&".join(f"p{i}=v" for i in range(400)), "live"),
    "garbage-semicolons": (";;;a=b;token=x", 401),  # ';' separates nothing: the token is spoilt
    "garbage-lastEventId-twice": ("&lastEventId=1&lastEventId=abc", "live"),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_malformed_stream_queries(server, guarded, token, user, case):
    query, expected = STREAM_CASES[case]
    target = f"{STREAM}?token={token(user)}{query.replace('{user}', user)}"

    def go() -> None:
        got = attempt(server, target)
        if expected == "gunicorn-4xx":
            assert got.status is not None and 400 <= got.status < 500 and got.status != 404, got.status
        elif expected == "live":
            assert got.status == 200 and got.body.startswith(b"retry: "), got.body[:200]
            assert got.connected, f"stream not admitted: {got.body[:300]!r}"
        else:
            refused_with(got, int(expected))

    guarded(case, go)


HEADER_CASES: dict[str, tuple[list[tuple[str, str]], int | str]] = {
    "one-8000-byte-header": ([("X-Pad", "p" * 8000)], "live"),
    "one-9000-byte-header": ([("X-Pad", "p" * 9000)], "gunicorn-4xx"),
    "90-headers-of-4k": ([(f"X-Pad-{i}", "p" * 4000) for i in range(90)], "live"),
    "101-headers": ([(f"X-H-{i}", "v") for i in range(101)], "gunicorn-4xx"),
    "bearer-8000-garbage": ([("Authorization", "Bearer " + "g" * 8000)], 401),
    "bearer-empty": ([("Authorization", "Bearer ")], 401),
    "bearer-two-tokens": ([("Authorization", "Bearer a.b.c d.e.f")], 401),
    "cookie-8000-garbage": ([("Cookie", "access_token_cookie=" + "g" * 7900)], 401),
    "cookie-many": ([("Cookie", "; ".join(f"c{i}=v" for i in range(500)))], 401),
    "accept-weird": ([("Accept", "application/json")], 401),
    "origin-garbage": ([("Origin", "\u00ff\u00fe" * 10)], 401),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_huge_and_strange_headers(server, guarded, case):
    headers, expected = HEADER_CASES[case]

    def go() -> None:
        raw = (
            "\r\n".join([f"GET {STREAM} HTTP/1.1", "Host: x", *[f"{k}: {v}" for k, v in headers]]) + "\r\n\r\n"
        ).encode("latin-1")
        got = attempt(server, STREAM, raw_request=raw)
        if expected == "gunicorn-4xx":
            assert got.status is not None and 400 <= got.status < 500, got.status
        elif expected == "live":
            assert got.status == 200
        else:
            refused_with(got, int(expected))

    guarded(case, go)


def test_big_headers_with_a_valid_token_still_stream(server, guarded, token, user):
    def go() -> None:
        got = attempt(server, f"{STREAM}?token={token(user)}", headers=[(f"X-Pad-{i}", "p" * 4000) for i in range(90)])
        assert got.connected, got.body[:200]

    guarded("90 big headers", go)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST"])
def test_other_methods_on_the_stream_are_405(server, guarded, token, user, method):
    r = guarded(
        method,
        lambda: request(
            server, method, f"{STREAM}?token={token(user)}", b"{}", {"Authorization": f"Bearer {token(user)}"}
        ),
    )
    assert r.status == 405, (r.status, r.body[:200])


@pytest.mark.parametrize("method", ["TRACE", "FOO", "PROPFIND"])
def test_unknown_methods_are_refused(server, guarded, token, user, method):
    r = guarded(method, lambda: request(server, method, f"{STREAM}?token={token(user)}"))
    assert 400 <= r.status < 500, (r.status, r.body[:200])
    assert token(user).split(".")[1] not in r.body.decode("latin-1")


def test_get_on_publish_is_405(server, guarded, token, user):
    r = guarded(
        "GET publish", lambda: request(server, "GET", PUBLISH, headers={"Authorization": f"Bearer {token(user)}"})
    )
    assert r.status == 405


# ------------------------------------------------------------------ the publish endpoint


@dataclass
class P:
    body: Any = None
    raw: bytes | None = None
    status: int | tuple[int, ...] = 422
    headers: dict[str, str] | None = None
    auth: str = "publisher"  # publisher | none | reader | query | cookie


PUBLISH_CASES = {
    "event-name-space": P({"event": "bad name", "data": 1}),
    "event-name-empty": P({"event": "", "data": 1}),
    "event-name-129": P({"event": "e" * 129, "data": 1}),
    "event-name-unicode": P({"event": "\u00e9v\u00e9nement", "data": 1}),
    "event-name-newline": P({"event": "x\ndata: pwned", "data": 1}),
    "event-name-number": P({"event": 5, "data": 1}),
    "event-name-null": P({"event": None, "data": 1}),
    "event-reserved-error": P({"event": "error", "data": {"code": 401}}),
    "event-reserved-reset": P({"event": "reset", "data": {}}),
    "event-reserved-heartbeat": P({"event": "heartbeat", "data": {}}),
    "invalid-json": P(raw=b'{"event": "x", "data": ', status=400),
    "empty-body": P(raw=b"", status=400),
    "not-utf8": P(raw=b'{"event":"x","data":"\xff\xfe"}', status=400),
    "json-as-text-plain": P(raw=b'{"event":"x","data":1}', status=(400, 415), headers={"Content-Type": "text/plain"}),
    "non-object-string": P('"event"'),
    "non-object-number": P(42),
    "non-object-null": P(raw=b"null", status=(400, 422)),
    "empty-array": P([]),
    "array-of-garbage": P([1, 2, 3]),
    "array-one-bad": P([{"event": "ok", "data": 1}, {"event": "bad name", "data": 1}]),
    "missing-data": P({"event": "x"}),
    "missing-event": P({"data": 1}),
    "unknown-key": P({"event": "x", "data": 1, "user": "u"}),
    "unknown-keys-many": P({"event": "x", "data": 1, **{f"k{i}": i for i in range(100)}}),
    "data-nul": P({"event": "x", "data": "a\x00b"}),
    "data-nul-in-key": P({"event": "x", "data": {"a\x00": 1}}),
    "data-nan": P(raw=b'{"event":"x","data":NaN}', status=(400, 422)),
    "data-infinity": P(raw=b'{"event":"x","data":[Infinity]}', status=(400, 422)),
    "data-over-limit": P({"event": "x", "data": "d" * MAX_PAYLOAD_BYTES}, status=413),
    "data-far-over-limit": P({"event": "x", "data": ["d" * 1000] * 2000}, status=413),
    # 3 kB, under the payload limit, but nested deeper than Python's recursion limit
    "data-deeply-nested": P(raw=b'{"event":"x","data":' + b"[" * 1500 + b"]" * 1500 + b"}", status=(400, 422)),
    "body-deeply-nested": P(raw=b"[" * 100_000 + b"]" * 100_000, status=(400, 413, 422)),
    "userId-bool": P({"event": "x", "data": 1, "userId": True}),
    "userId-empty": P({"event": "x", "data": 1, "userId": ""}),
    "userId-object": P({"event": "x", "data": 1, "userId": {"$ne": None}}),
    "userId-257": P({"event": "x", "data": 1, "userId": "u" * 257}),
    "userId-nul": P({"event": "x", "data": 1, "userId": "a\x00"}),
    "channel-bad": P({"event": "x", "data": 1, "channel": "a b"}),
    "channel-number": P({"event": "x", "data": 1, "channel": 7}),
    "channel-list": P({"event": "x", "data": 1, "channel": ["news"]}),
    "no-token": P({"event": "x", "data": 1}, status=401, auth="none"),
    "token-in-query": P({"event": "x", "data": 1}, status=401, auth="query"),
    "token-in-cookie": P({"event": "x", "data": 1}, status=401, auth="cookie"),
    "no-grant": P({"event": "x", "data": 1}, status=403, auth="reader"),
    "no-grant-for-channel": P({"event": "x", "data": 1, "channel": "news"}, status=403, auth="reader"),
}


@pytest.mark.parametrize("case", list(PUBLISH_CASES))
def test_publish_rejects_bad_input(server, guarded, jwt_secret, case):
    p = PUBLISH_CASES[case]
    publisher_token = mint(jwt_secret, "svc", notifications={"publish": ["*"]})
    reader_token = mint(jwt_secret, "reader")
    headers = {"Content-Type": "application/json", **(p.headers or {})}
    path = PUBLISH
    if p.auth == "publisher":
        headers["Authorization"] = f"Bearer {publisher_token}"
    elif p.auth == "reader":
        headers["Authorization"] = f"Bearer {reader_token}"
    elif p.auth == "query":
        path += f"?token={publisher_token}"
    elif p.auth == "cookie":
        headers["Cookie"] = f"access_token_cookie={publisher_token}"
    body = p.raw if p.raw is not None else json.dumps(p.body).encode()
    r = guarded(case, lambda: request(server, "POST", path, body, headers))
    expected = p.status if isinstance(p.status, tuple) else (p.status,)
    assert r.status in expected, (case, r.status, r.body[:300])
    assert (r.header("Content-Type") or "").startswith("application/json"), r.headers
    answer = r.json()
    assert answer["code"] == r.status and isinstance(answer["error"], str) and answer["error"], answer


def test_publish_at_the_payload_limit_is_accepted(server, guarded, jwt_secret):
    tok = mint(jwt_secret, "svc", notifications={"publish": ["*"]})
    data = "d" * (MAX_PAYLOAD_BYTES - 2)  # the JSON string's quotes make it exactly the limit
    r = guarded("payload at limit", lambda: publish(server, tok, {"event": "x", "data": data}))
    assert r.status == 201, r.body[:200]


def test_publish_refuses_a_declared_huge_body_without_waiting_for_it(server, guarded, jwt_secret):
    """An authenticated client declares a 1 GiB body: the answer must be 413 at once, not after
    the worker has received and buffered a gigabyte (no request-size cap is a memory DoS)."""
    tok = mint(jwt_secret, "svc", notifications={"publish": ["*"]})

    def go() -> bytes:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(
                f"POST {PUBLISH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {2**30}\r\n\r\n".encode()
                + b'{"event":"x","data":"'
                + b"d" * 65536
            )
            try:
                return s.recv(200)
            except TimeoutError:
                return b"(no answer within 5 s)"

    head = guarded("declared 1 GiB body", go)
    assert head.startswith(b"HTTP/1.1 413"), head
