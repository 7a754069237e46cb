"""Ending a user's streams and revoking their tokens, on every worker and machine.

``disconnect(user_id)`` sends one NOTIFY on the control channel (the events channel's name plus
``.control``); every worker's listener hears it and ends that user's streams with an ``error``
event ``{"error": "disconnected", "code": 401, "reason": ...}``. ``revoke_tokens(user_id)``
also stores the moment in the revocations table, in the same transaction as its NOTIFY: from
then on every token of that user issued before that second (its ``iat``; a token without one
too) is refused, by every route.

Each worker keeps the revocations table in memory (``Revocations``): its listener loads it
after every LISTEN, so a worker that was away misses nothing, and applies each revocation it
hears. Checking a token costs a dict lookup, no query; only a process without a listener (a CLI
command, a test client) asks the database.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, text

from . import metrics
from .auth import AccessError, Identity
from .events import serialize, validate_user_id
from .exceptions import InvalidInput
from .schema import Names
from .sse import encode

if TYPE_CHECKING:
    from .fanout import Hub

log = logging.getLogger("notifications.control")

MAX_REASON_LENGTH = 500
DEFAULT_REASON = "disconnected by the server"
REVOKED_REASON = "tokens revoked"

__all__ = ["disconnect", "revoke_tokens"]


def control_channel(names: Names) -> str:
    """The NOTIFY channel of the control messages of this events table."""
    return f"{names.channel}.control"


def validate_reason(reason: object) -> str:
    if reason is None:
        return DEFAULT_REASON
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
        raise InvalidInput(f"invalid reason: a string of at most {MAX_REASON_LENGTH} characters")
    return reason


class Revocations:
    """This worker's copy of the revocations table: user id to the second from which their
    tokens are valid again (tokens issued in an earlier second are void)."""

    def __init__(self, engine: Engine, names: Names, current: Callable[[], bool]) -> None:
        self.engine = engine
        self.names = names
        self.current = current  # whether the copy is up to date (the listener is connected)
        self._since: dict[str, float] = {}

    def load(self, conn: Connection) -> None:
        """Read the whole table (the listener, right after its LISTEN)."""
        rows = conn.execute(text(f"SELECT user_id, revoked_at FROM {self.names.sql('_revocations')}"))
        self._since = {user: float(at) for user, at in rows}

    def note(self, user_id: str, at: float) -> None:
        """A revocation heard on the control channel."""
        self._since[user_id] = max(at, self._since.get(user_id, 0.0))

    def revoked(self, identity: Identity, cached_only: bool = False) -> bool:
        """Whether ``identity``'s token was issued before its user's revocation. Identities of
        the host app's own login (``identity=`` hook) are not tokens and never revoked."""
        if not identity.token:
            return False
        if self.current() or cached_only:
            since = self._since.get(identity.subject)
        else:
            with self.engine.connect() as conn:
                since = conn.execute(
                    text(f"SELECT revoked_at FROM {self.names.sql('_revocations')} WHERE user_id = :u"),
                    {"u": identity.subject},
                ).scalar()
        if since is None:
            return False
        # iat has a resolution of one second: a token issued in the revocation's own second is
        # taken to be newer (a new login right after a logout must work).
        return identity.issued_at is None or identity.issued_at < math.floor(since)

    def check(self, identity: Identity) -> None:
        """Raise ``AccessError`` 401 for a revoked token."""
        if self.revoked(identity):
            raise AccessError(401, "token revoked")


def disconnect_frame(reason: str) -> bytes:
    """The last frame of a stream ended by ``disconnect`` or ``revoke_tokens``."""
    return encode(event="error", data=serialize({"error": "disconnected", "code": 401, "reason": reason}))


def handle(payload: str, hub: Hub, revocations: Revocations) -> None:
    """Apply one control message heard by this worker's listener."""
    try:
        message = json.loads(payload)
        op, user_id = message["op"], str(message["user"])
        at = float(message["at"]) if op == "revoke" else 0.0
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed control message")
        return
    if op == "revoke":
        revocations.note(user_id, at)
        reason = REVOKED_REASON
    elif op == "disconnect":
        reason = str(message.get("reason") or DEFAULT_REASON)
    else:
        return
    ended = hub.end_streams(user_id, "revoked" if op == "revoke" else "disconnected", disconnect_frame(reason))
    if ended:
        metrics.DISCONNECTED_STREAMS.inc(ended)
        log.info("ended %d stream(s) of user %s: %s", ended, user_id, reason)


def _open_streams(conn: Connection, state: Any, user_id: str) -> int:
    """The user's open streams as the presence rows know them (0 when they are not kept)."""
    from .presence import count_user_streams

    return count_user_streams(conn, state, user_id) if state.limits.tracks_streams else 0


def disconnect(user_id: str | int, reason: str | None = None) -> int:
    """End every open stream of ``user_id`` on every worker and machine (within a second or
    two); return how many were open as far as presence knows (0 when presence is off). It does
    not stop a reconnect with a still valid token: ``revoke_tokens`` does."""
    from .state import get_state

    user, why = validate_user_id(user_id), validate_reason(reason)
    state = get_state()
    with state.store.engine.begin() as conn:
        streams = _open_streams(conn, state, user)
        _notify(conn, state.names, {"op": "disconnect", "user": user, "reason": why})
    return streams


def revoke_tokens(user_id: str | int) -> int:
    """Void every token of ``user_id`` issued before now, everywhere (stored: it outlives
    restarts), and end their open streams; return how many were open (as ``disconnect``)."""
    from .state import get_state

    user = validate_user_id(user_id)
    state = get_state()
    at = time.time()
    with state.store.engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {state.names.sql('_revocations')} AS r (user_id, revoked_at) VALUES (:u, :at) "
                "ON CONFLICT (user_id) DO UPDATE SET revoked_at = GREATEST(r.revoked_at, excluded.revoked_at)"
            ),
            {"u": user, "at": at},
        )
        streams = _open_streams(conn, state, user)
        _notify(conn, state.names, {"op": "revoke", "user": user, "at": at})
    metrics.REVOCATIONS.inc()
    log.info("revoked the tokens of user %s issued before %.3f", user, at)
    return streams


def _notify(conn: Connection, names: Names, message: dict[str, Any]) -> None:
    """One control message, sent when the transaction commits."""
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": control_channel(names), "payload": json.dumps(message)},
    )
