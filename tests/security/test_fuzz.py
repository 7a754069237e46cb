"""Property-based fuzz of the stream's query string and headers against the running main server.

Whatever a client sends (within gunicorn's request-size limits): the answer is ``200`` with a
body that starts with ``retry:``, then either the live stream (connect message) or exactly one
``error`` event with a documented code, never a 5xx; the log shows no traceback; and two live
streams (one per worker) keep receiving events published between the examples.
"""

from __future__ import annotations

import os
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.tokens import mint

from .conftest import LogWatch
from .wire import STREAM, Live, attempt

DOCUMENTED = {400, 401, 403, 429}


@pytest.fixture(scope="module")
def live(server, publisher, jwt_secret):
    lv = Live(server, publisher, jwt_secret, "fuzz-live-" + os.urandom(3).hex())
    yield lv
    lv.close()


@pytest.fixture(scope="module")
def tokens(jwt_secret):
    return {
        "valid": mint(jwt_secret, "fuzz-user"),
        "granted": mint(jwt_secret, "fuzz-user", notifications={"subscribe": ["*"]}),
        "expired": mint(jwt_secret, "fuzz-user", ttl=-10),
        "wrong-key": mint("w" * 43, "fuzz-user"),
        "garbage": "eyJhbGciOiJub25lIn0.e30.",
    }


# text that includes control characters, NUL, surrogate-free unicode, separators
any_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
name_like = st.text("abcxyzABC019_.:-", min_size=1, max_size=20)
channels = st.lists(st.one_of(name_like, any_text), max_size=8).map(",".join)
last_ids = st.one_of(st.integers(-5, 10**21).map(str), any_text, st.sampled_from(["0", "1", " 7 ", "00"]))
KEYS = ["token", "ticket", "userId", "channels", "lastEventId", "Token", "token[]", "x"]
# header values as a browser or proxy might send them: printable latin-1, no CR/LF
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
HEADER_NAMES = [
    "Last-Event-ID",
    "Authorization",
    "Cookie",
    "Origin",
    "Accept",
    "Cache-Control",
    "X-Forwarded-For",
    "Referer",
    "Accept-Encoding",
    "Range",
    "If-None-Match",
    "Upgrade",
]
# (no "Expect": gunicorn answers an unknown expectation with 417 itself, as HTTP says)


@st.composite
def requests(draw):
    tok_kind = draw(st.sampled_from(["valid", "granted", "expired", "wrong-key", "garbage", None]))
    token_where = draw(st.sampled_from(["query", "bearer", "cookie"]))
    params = []
    for key in draw(st.lists(st.one_of(st.sampled_from(KEYS), any_text), max_size=6)):
        if key == "channels":
            value = draw(channels)
        elif key == "lastEventId":
            value = draw(last_ids)
        elif key == "userId":
            value = draw(st.one_of(st.just("fuzz-user"), any_text))
        else:
            value = draw(any_text)
        params.append((key, value))
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_text), max_size=4))
    return tok_kind, token_where, params, headers


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
def test_stream_fuzz(server, live, tokens, req):
    tok_kind, token_where, params, headers = req
    headers = list(headers)
    if tok_kind is not None:
        tok = tokens[tok_kind]
        if token_where == "query":
            params = [("token", tok), *params]
        elif token_where == "bearer":
            headers.append(("Authorization", f"Bearer {tok}"))
        else:
            headers.append(("Cookie", f"access_token_cookie={tok}"))
    target = STREAM + ("?" + urlencode(params) if params else "")
    lines = [f"GET {target} HTTP/1.1", "Host: fuzz", *[f"{k}: {v}" for k, v in headers]]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    watch = LogWatch(server)
    got = attempt(server, target, raw_request=raw, timeout=8)
    assert got.status == 200, (got.status, got.body[:200], raw[:500])
    assert got.body.startswith(b"retry: "), (got.body[:200], raw[:500])
    if not got.connected:
        error = got.error
        assert error is not None, (got.body[:300], raw[:500])
        assert error["code"] in DOCUMENTED, (error, raw[:500])
        assert got.ended, "a refusal must end the response"
    live.check(repr(raw[:200]))  # also gives the access line time to reach the log
    watch.assert_clean(repr(raw[:300]))


def test_live_streams_survived_the_fuzz(live, server):
    live.check("after the fuzz")
