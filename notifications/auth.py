"""Who is asking and what they may read or publish: token to identity, grants, channel policy.

Tokens are verified by flask-jwt-extended (``?token=``, ``Authorization: Bearer`` or its
cookie). A token's ``notifications`` claim may widen access, Mercure-style:
``{"notifications": {"subscribe": [patterns], "publish": [patterns]}}``; a pattern is a
channel name, ``user:<id>``, or a prefix ending in ``*``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request
from flask_jwt_extended import decode_token, default_callbacks, get_jwt, verify_jwt_in_request
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError
from flask_jwt_extended.internal_utils import verify_token_type
from flask_jwt_extended.tokens import _decode_jwt
from jwt.exceptions import ExpiredSignatureError, PyJWTError

from .exceptions import NotificationsError

GRANT_CLAIM = "notifications"


class AccessError(NotificationsError):
    """A refusal with its HTTP-like code (400, 401, 403) and optional detail keys."""

    def __init__(self, code: int, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    def as_data(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.detail}


@dataclass(frozen=True)
class Identity:
    """A verified caller: its subject, expiry (epoch seconds) and grant patterns; for a token,
    also when it was issued (``iat``, None when it has none), since a revocation voids the
    tokens issued before it (``control.Revocations``)."""

    subject: str
    expires_at: float | None
    subscribe: tuple[str, ...] = field(default=())
    publish: tuple[str, ...] = field(default=())
    token: bool = False  # from a JWT (or a ticket traded for one), not the host app's own login
    issued_at: float | None = None


def _patterns(grant: Any, key: str) -> tuple[str, ...]:
    if not isinstance(grant, dict):
        return ()
    values = grant.get(key)
    if not isinstance(values, list):
        return ()
    return tuple(v for v in values if isinstance(v, str))


class VerifiedTokens:
    """The identities of the tokens this worker has verified, until they expire: a browser
    reconnects with the same ``?token=``, a service publishes with the same ``Bearer`` token, and
    their signatures need not be checked again. Bounded (oldest first out); size 0 turns it off."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Ordered: dropping the oldest is O(1) (next(iter(dict)) walks the slots of every
        # entry deleted before it, which made a full cache cost more per put the longer it ran).
        self._known: OrderedDict[str, Identity] = OrderedDict()

    def get(self, token: str) -> Identity | None:
        identity = self._known.get(token)
        if identity is not None and identity.expires_at is not None and identity.expires_at <= time.time():
            del self._known[token]
            return None
        return identity

    def put(self, token: str, identity: Identity) -> None:
        if not self.size:
            return
        if len(self._known) >= self.size:
            self._known.popitem(last=False)
        self._known[token] = identity


def cacheable_tokens(app: Flask) -> bool:
    """Whether a verified token may be remembered: not when the app checks tokens against a
    blocklist, verifies them further or looks their users up (flask-jwt-extended loaders)."""
    manager = app.extensions.get("flask-jwt-extended")
    defaults = {
        "_token_in_blocklist_callback": default_callbacks.default_blocklist_callback,
        "_token_verification_callback": default_callbacks.default_token_verification_callback,
        "_user_lookup_callback": None,
    }
    return manager is not None and all(getattr(manager, name, None) is value for name, value in defaults.items())


def authenticate(
    locations: Sequence[str] = ("query_string", "headers", "cookies"), cache: VerifiedTokens | None = None
) -> Identity:
    """Verify the request's JWT; raise ``AccessError`` 401 when it is missing or not valid.

    With ``cache``, a token verified before is not verified again (see ``_presented_token``)."""
    token = None
    if cache is not None and cache.size:
        token = _presented_token(locations[0])
        known = None if token is None else cache.get(token)
        if known is not None:
            return known
    try:
        verify_jwt_in_request(locations=list(locations))
        claims = get_jwt()
    except NoAuthorizationError:
        raise AccessError(401, "missing token") from None
    except ExpiredSignatureError:
        raise AccessError(401, "token expired") from None
    except (JWTExtendedException, PyJWTError, ValueError, TypeError):
        raise AccessError(401, "invalid token") from None
    identity = identity_from_claims(claims)
    if token is not None and cache is not None:
        cache.put(token, identity)
    return identity


class QueryTokenVerifier:
    """Verifies a ``?token=`` as ``authenticate`` would, without a request or app context, and
    remembers it in ``cache``: flask-jwt-extended's checks (signature, expiry, not-before,
    audience, issuer, an access token and not a refresh token) with the app's settings, read
    once. Only for apps whose tokens may be cached (see ``cacheable_tokens``): no blocklist or
    other loader would have run.

    With the default decode-key loader the token is decoded once, by flask-jwt-extended's own
    verifying decode (``tokens._decode_jwt``, the one ``decode_token`` ends in); ``decode_token``
    itself first decodes it twice unverified, only to hand header and claims to that loader,
    which ignores them. An app with a loader of its own gets ``decode_token``.
    ``tests/unit/test_auth.py`` holds both to the same answers."""

    def __init__(self, app: Flask, cache: VerifiedTokens) -> None:
        self.app = app
        self.cache = cache
        with app.app_context():
            manager = app.extensions["flask-jwt-extended"]
            self._settings: dict[str, Any] | None = None
            if manager._decode_key_callback is default_callbacks.default_decode_key_callback:
                self._settings = {
                    "algorithms": jwt_config.decode_algorithms,
                    "allow_expired": False,
                    "audience": jwt_config.decode_audience,
                    "csrf_value": "",  # no CSRF check, as decode_token's default
                    "identity_claim_key": jwt_config.identity_claim_key,
                    "issuer": jwt_config.decode_issuer,
                    "leeway": jwt_config.leeway,
                    "secret": jwt_config.decode_key,
                    "verify_aud": jwt_config.decode_audience is not None,
                    "verify_sub": jwt_config.verify_sub,
                }

    def verify(self, token: str) -> Identity:
        """The token's identity; ``AccessError`` 401 as ``authenticate`` answers."""
        try:
            if self._settings is not None:
                claims = _decode_jwt(encoded_token=token, **self._settings)
            else:
                with self.app.app_context():
                    claims = decode_token(token)
            verify_token_type(claims, refresh=False)
        except ExpiredSignatureError:
            raise AccessError(401, "token expired") from None
        except (JWTExtendedException, PyJWTError, ValueError, TypeError):
            raise AccessError(401, "invalid token") from None
        identity = identity_from_claims(claims)
        self.cache.put(token, identity)
        return identity


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    """The identity a verified token's claims describe; ``AccessError`` 401 without a usable
    subject or expiry."""
    subject = claims.get("sub")
    if isinstance(subject, bool) or not isinstance(subject, (str, int)) or str(subject) == "":
        raise AccessError(401, "invalid token: no subject")
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        raise AccessError(401, "invalid token: no expiry (exp)")
    grant = claims.get(GRANT_CLAIM)
    issued = claims.get("iat")
    return Identity(
        subject=str(subject),
        expires_at=float(expires),
        subscribe=_patterns(grant, "subscribe"),
        publish=_patterns(grant, "publish"),
        token=True,
        issued_at=float(issued) if isinstance(issued, (int, float)) and not isinstance(issued, bool) else None,
    )


def _presented_token(location: str) -> str | None:
    """The token flask-jwt-extended verifies first, when it is in ``location`` in a plain form:
    the ``?token=`` parameter, or an ``Authorization: Bearer <token>`` header of that one value."""
    config = current_app.config
    if location == "query_string":
        return request.args.get(config["JWT_QUERY_STRING_NAME"])
    if location == "headers" and config["JWT_HEADER_TYPE"]:
        kind, _, token = request.headers.get(config["JWT_HEADER_NAME"], "").partition(" ")
        if kind == config["JWT_HEADER_TYPE"] and token and not any(c in token for c in ", \t"):
            return token
    return None


def matches(patterns: Iterable[str], target: str) -> bool:
    """Whether any pattern names ``target`` exactly or as a prefix ending in ``*``."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if target.startswith(pattern[:-1]):
                return True
        elif pattern == target:
            return True
    return False


def authorize_stream(
    identity: Identity, user_id: str | None, channels: Sequence[str], public_channels: frozenset[str]
) -> str:
    """Check a stream's ``userId`` and channels; return whose targeted events it reads."""
    reader = identity.subject if user_id is None else user_id
    if reader != identity.subject and not matches(identity.subscribe, f"user:{reader}"):
        raise AccessError(403, f"not allowed to read the events of user {reader!r}", userId=reader)
    for channel in channels:
        if channel not in public_channels and not matches(identity.subscribe, channel):
            raise AccessError(403, f"not allowed to read channel {channel!r}", channel=channel)
    return reader


def authorize_publish(identity: Identity, user_id: str | None, channel: str | None) -> None:
    """Check that the token's publish grant covers an event's target."""
    targets = []
    if channel is not None:
        targets.append(channel)
    if user_id is not None:
        targets.append(f"user:{user_id}")
    if not targets:
        targets.append("*")
    for target in targets:
        allowed = matches(identity.publish, target) if target != "*" else "*" in identity.publish
        if not allowed:
            raise AccessError(403, f"not allowed to publish to {target!r}", target=target)
