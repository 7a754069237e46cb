"""Who is asking and what they may read or publish: token to identity, grants, channel policy.

Tokens are verified by flask-jwt-extended (``?token=``, ``Authorization: Bearer`` or its
cookie). A token's ``notifications`` claim may widen access, Mercure-style:
``{"notifications": {"subscribe": [patterns], "publish": [patterns]}}``; a pattern is a
channel name, ``user:<id>``, or a prefix ending in ``*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError
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
    """A verified caller: its subject, expiry (epoch seconds) and grant patterns."""

    subject: str
    expires_at: float | None
    subscribe: tuple[str, ...] = field(default=())
    publish: tuple[str, ...] = field(default=())


def _patterns(grant: Any, key: str) -> tuple[str, ...]:
    if not isinstance(grant, dict):
        return ()
    values = grant.get(key)
    if not isinstance(values, list):
        return ()
    return tuple(v for v in values if isinstance(v, str))


def authenticate(locations: Sequence[str] = ("query_string", "headers", "cookies")) -> Identity:
    """Verify the request's JWT; raise ``AccessError`` 401 when it is missing or not valid."""
    try:
        verify_jwt_in_request(locations=list(locations))
        claims = get_jwt()
    except NoAuthorizationError:
        raise AccessError(401, "missing token") from None
    except ExpiredSignatureError:
        raise AccessError(401, "token expired") from None
    except (JWTExtendedException, PyJWTError, ValueError, TypeError):
        raise AccessError(401, "invalid token") from None
    subject = claims.get("sub")
    if isinstance(subject, bool) or not isinstance(subject, (str, int)) or str(subject) == "":
        raise AccessError(401, "invalid token: no subject")
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        raise AccessError(401, "invalid token: no expiry (exp)")
    grant = claims.get(GRANT_CLAIM)
    return Identity(
        subject=str(subject),
        expires_at=float(expires),
        subscribe=_patterns(grant, "subscribe"),
        publish=_patterns(grant, "publish"),
    )


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
