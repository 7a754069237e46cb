"""Verifying a ``?token=`` in front of Flask (``auth.QueryTokenVerifier``) answers as
flask-jwt-extended's own ``decode_token`` + ``verify_jwt_in_request`` do: the same identity for a
good token, and 401 for every token they refuse (expired, bad signature, wrong audience or
issuer, not yet valid, a refresh token, no subject, no expiry, garbage), with the app's JWT
settings, in one decode instead of three."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from flask import Flask
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token

from notifications.auth import AccessError, QueryTokenVerifier, VerifiedTokens

SECRET = "unit-test-secret-" + "x" * 40


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(JWT_SECRET_KEY=SECRET, JWT_VERIFY_SUB=False, **config)
    JWTManager(app)
    return app


def raw(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode({"type": "access", **claims}, key, algorithm="HS256")


def verify(app: Flask, token: str, cache: VerifiedTokens | None = None) -> Any:
    return QueryTokenVerifier(app, cache or VerifiedTokens(10)).verify(token)  # no context needed


def test_a_good_token_gives_its_subject_expiry_and_grants_and_is_remembered():
    app = make_app()
    with app.app_context():
        token = create_access_token("alice", additional_claims={"notifications": {"subscribe": ["news"]}})
    cache = VerifiedTokens(10)
    identity = verify(app, token, cache)
    assert identity.subject == "alice" and identity.subscribe == ("news",) and identity.publish == ()
    assert identity.expires_at is not None and identity.expires_at > time.time()
    assert cache.get(token) == identity


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (raw({"sub": "a", "exp": time.time() - 10}), "token expired"),
        (raw({"sub": "a", "exp": time.time() + 86400}, key="another-key-" + "y" * 40), "invalid token"),
        (raw({"sub": "a", "exp": time.time() + 86400, "nbf": time.time() + 86400 * 2}), "invalid token"),
        (raw({"sub": "a", "exp": time.time() + 86400, "type": "refresh"}), "invalid token"),
        (raw({"exp": time.time() + 86400}), "invalid token"),
        (raw({"sub": "", "exp": time.time() + 86400}), "invalid token: no subject"),
        (raw({"sub": "a"}), "invalid token: no expiry (exp)"),
        ("not.a.token", "invalid token"),
        ("", "invalid token"),
    ],
    ids=[
        "expired",
        "bad-signature",
        "not-yet-valid",
        "refresh-type",
        "no-sub",
        "empty-sub",
        "no-exp",
        "garbage",
        "empty",
    ],
)
def test_refused_tokens_are_401_with_the_views_message(token: str, message: str):
    cache = VerifiedTokens(10)
    with pytest.raises(AccessError) as refused:
        verify(make_app(), token, cache)
    assert (refused.value.code, refused.value.message) == (401, message)
    assert cache.get(token) is None


def test_a_refresh_token_minted_by_flask_jwt_extended_is_refused():
    app = make_app()
    with app.app_context():
        token = create_refresh_token("alice")
    with pytest.raises(AccessError) as refused:
        verify(app, token)
    assert refused.value.code == 401


def test_audience_and_issuer_settings_apply():
    app = make_app(JWT_DECODE_AUDIENCE="notifications", JWT_DECODE_ISSUER="https://auth.example.com")
    good = {"sub": "a", "exp": time.time() + 86400, "aud": "notifications", "iss": "https://auth.example.com"}
    assert verify(app, raw(good)).subject == "a"
    for wrong in ({"aud": "other"}, {"iss": "https://evil.example.com"}):
        with pytest.raises(AccessError) as refused:
            verify(app, raw({**good, **wrong}))
        assert refused.value.code == 401


def test_a_custom_decode_key_loader_is_still_asked_for_the_key():
    app = make_app()
    manager = app.extensions["flask-jwt-extended"]
    asked: list[str] = []

    @manager.decode_key_loader
    def key_for(header: dict[str, Any], payload: dict[str, Any]) -> str:
        asked.append(payload["sub"])
        return "per-tenant-key-" + "z" * 40

    token = raw({"sub": "tenant-user", "exp": time.time() + 86400}, key="per-tenant-key-" + "z" * 40)
    assert verify(app, token).subject == "tenant-user"
    assert asked == ["tenant-user"]
