"""Tokens on the main (HS256) server: the three places a stream's token may come from, and every
forged, tampered, incomplete or stale token refused with a 401 ``error`` event (and 401 JSON on
the publish endpoint)."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.support.checks import assert_refused

from . import jwts
from .wire import publish


@pytest.mark.parametrize("source", ["query", "bearer", "cookie"])
def test_each_token_source_opens_the_stream(open_stream, token, publisher, user, source):
    tok = token(user)
    if source == "query":
        c = open_stream(tok)
    elif source == "bearer":
        c = open_stream(headers={"Authorization": f"Bearer {tok}"})
    else:
        c = open_stream(headers={"Cookie": f"access_token_cookie={tok}"})
    assert c.wait_headers() == 200
    c.wait_connected()
    got = c.wait_for_id(publisher.notify("yours", user_id=user))
    assert got.json()["message"] == "yours"


def test_cookie_of_another_name_is_not_a_token(open_stream, token, user):
    assert_refused(open_stream(headers={"Cookie": f"session={token(user)}; jwt={token(user)}"}), 401)


def test_non_bearer_authorization_is_not_a_token(open_stream, token, user):
    assert_refused(open_stream(headers={"Authorization": f"Basic {token(user)}"}), 401)


def forged_tokens(secret: str, user: str) -> dict[str, str]:
    good = jwt.encode(jwts.claims(user), secret, algorithm="HS256")
    now = int(time.time())
    return {
        "alg-none": jwts.unsigned(jwts.claims(user)),
        "alg-None": jwts.unsigned(jwts.claims(user), alg="None"),
        "alg-NONE-with-signature": jwts.unsigned(jwts.claims(user), alg="NONE") + "c2ln",
        "alg-none-real-signature": jwts.raw_token({"alg": "none"}, jwts.claims(user))[:-1] + good.rsplit(".", 1)[1],
        "tampered-sub": jwts.tamper_payload(good, sub=f"{user}-admin"),
        "tampered-grant": jwts.tamper_payload(good, notifications={"subscribe": ["*"]}),
        "tampered-exp": jwts.tamper_payload(
            jwt.encode(jwts.claims(user, ttl=-60), secret, algorithm="HS256"), exp=now + 3600
        ),
        "tampered-signature": jwts.tamper_signature(good),
        "signature-stripped": good.rsplit(".", 1)[0] + ".",
        "wrong-key": jwt.encode(jwts.claims(user), "x" * 32 + "another-secret", algorithm="HS256"),
        "other-hmac-algorithm": jwts.hs256_raw(jwts.claims(user), secret.encode(), alg="HS512"),
        "missing-exp": jwt.encode({"sub": user, "iat": now}, secret, algorithm="HS256"),
        "exp-as-string": jwt.encode({"sub": user, "exp": str(now + 3600)}, secret, algorithm="HS256"),
        "expired": jwt.encode(jwts.claims(user, ttl=-5), secret, algorithm="HS256"),
        "not-yet-valid": jwt.encode(jwts.claims(user, nbf=now + 3600), secret, algorithm="HS256"),
        "missing-sub": jwt.encode({"exp": now + 3600}, secret, algorithm="HS256"),
        "empty-sub": jwt.encode({"sub": "", "exp": now + 3600}, secret, algorithm="HS256"),
        "object-sub": jwt.encode({"sub": {"id": user}, "exp": now + 3600}, secret, algorithm="HS256"),
        "bool-sub": jwt.encode({"sub": True, "exp": now + 3600}, secret, algorithm="HS256"),
        "payload-not-object": jwts.hs256_raw([user], secret.encode()),
        "garbage": "eyJhbGciOiJIUzI1NiJ9.not-base64!.sig",
        "two-parts": good.rsplit(".", 1)[0],
        "five-parts": good + ".AAAA.BBBB",
    }


FORGED = list(forged_tokens("k" * 32, "u"))


@pytest.mark.parametrize("kind", FORGED)
def test_forged_or_invalid_token_is_refused_401(open_stream, jwt_secret, user, kind):
    bad = forged_tokens(jwt_secret, user)[kind]
    data = assert_refused(open_stream(bad), 401)
    if kind == "expired":
        assert "expired" in data["error"], data
    header = open_stream(headers={"Authorization": f"Bearer {bad}"})
    assert_refused(header, 401)


@pytest.mark.parametrize("kind", ["alg-none", "tampered-grant", "wrong-key", "missing-exp", "expired"])
def test_forged_token_cannot_publish(server, jwt_secret, user, kind):
    bad = forged_tokens(jwt_secret, user)[kind]
    r = publish(server, bad, {"event": "x", "data": 1})
    assert r.status == 401, (r.status, r.body)
    assert r.json()["code"] == 401


def test_expired_token_error_says_so(open_stream, token, user):
    data = assert_refused(open_stream(token(user, ttl=-1)), 401)
    assert data["error"] == "token expired", data


def test_token_expiring_in_the_past_second_is_refused(open_stream, jwt_secret, user):
    """No leeway: exp == now (or just past) is expired."""
    tok = jwt.encode({"sub": user, "exp": int(time.time()) - 1}, jwt_secret, algorithm="HS256")
    assert_refused(open_stream(tok), 401)
