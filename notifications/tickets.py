"""Stream tickets: short-lived, single-use stand-ins for a JWT in the stream URL.

``POST /api/notifications/ticket`` with the real token (header or cookie) returns a random
ticket; ``GET /stream?ticket=...`` redeems it once, within its lifetime, as the same identity.
Only a SHA-256 digest is stored, so the table never holds a usable credential.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from sqlalchemy import Engine, text

from .auth import AccessError, Identity
from .schema import Names


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode("utf-8", "surrogatepass")).hexdigest()


def issue(engine: Engine, names: Names, identity: Identity, ttl: float) -> str:
    """Store a new ticket for ``identity``, valid ``ttl`` seconds (never past the token's exp)."""
    ticket = secrets.token_urlsafe(32)
    # The token's iat travels with the ticket: a revocation voids tickets of older tokens too.
    grants = {"subscribe": list(identity.subscribe), "publish": list(identity.publish), "iat": identity.issued_at}
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {names.sql('_tickets')} (digest, subject, grants, token_expires_at, expires_at) "
                "VALUES (:digest, :subject, CAST(:grants AS jsonb), :token_exp, "
                "now() + make_interval(secs => :ttl))"
            ),
            {
                "digest": _digest(ticket),
                "subject": identity.subject,
                "grants": json.dumps(grants),
                "token_exp": identity.expires_at,
                "ttl": ttl,
            },
        )
        conn.execute(text(f"DELETE FROM {names.sql('_tickets')} WHERE expires_at < now()"))
    return ticket


def redeem(engine: Engine, names: Names, ticket: str) -> Identity:
    """The identity behind ``ticket``, which is used up; ``AccessError`` 401 if not valid."""
    if not ticket or len(ticket) > 128:
        raise AccessError(401, "invalid ticket")
    with engine.begin() as conn:
        row = conn.execute(
            text(
                f"DELETE FROM {names.sql('_tickets')} WHERE digest = :digest "
                "RETURNING subject, grants, token_expires_at, expires_at > now() AS fresh"
            ),
            {"digest": _digest(ticket)},
        ).one_or_none()
    if row is None or not row.fresh:
        raise AccessError(401, "invalid or expired ticket")
    grants = row.grants or {}
    return Identity(
        subject=row.subject,
        expires_at=row.token_expires_at,
        subscribe=tuple(grants.get("subscribe", ())),
        publish=tuple(grants.get("publish", ())),
        token=True,
        issued_at=grants.get("iat"),
    )
