"""Who is online, across every worker and machine, from the rows that enforce the per-user cap.

Every admitted stream is a row of the streams table (user, channels, worker) for as long as it
is open: ``limits.Limits`` writes it in the same batch that checks the cap, so presence costs
no extra work on the connect path. A closed stream's row goes in the next batch (milliseconds),
a crashed worker's rows stop counting when its lease lapses (``NOTIFICATIONS_STREAM_LEASE``).

The rows exist when the cap is on (``NOTIFICATIONS_MAX_STREAMS_PER_USER`` > 0, the default) or
``NOTIFICATIONS_PRESENCE=on`` asks for them; ``off`` turns presence off even with the cap on.
Otherwise presence answers ``PresenceOff``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from .events import parse_channels, validate_user_id
from .exceptions import InvalidInput, NotificationsError
from .state import State, get_state

__all__ = ["ChannelPresence", "PresenceOff", "channel_users", "is_online", "user_streams", "who_reads"]


class PresenceOff(NotificationsError):
    """Presence is not kept (no per-user cap and ``NOTIFICATIONS_PRESENCE`` not on)."""


@dataclass(frozen=True)
class ChannelPresence:
    """The users with an open stream subscribed to a channel (sorted), and how many streams."""

    channel: str
    users: list[str]
    streams: int


def _live(state: State) -> str:
    n = state.names
    return (
        f"FROM {n.sql('_streams')} s JOIN {n.sql('_workers')} w ON w.worker = s.worker "
        "WHERE w.seen_at > now() - make_interval(secs => :lease)"
    )


def _checked(state: State) -> State:
    if not state.presence:
        raise PresenceOff("presence is off: set NOTIFICATIONS_PRESENCE=on (or keep the per-user stream cap on)")
    return state


def count_user_streams(conn: Connection, state: State, user_id: str) -> int:
    """The open streams of ``user_id`` (opened with a token of that subject)."""
    count: int = conn.execute(
        text(f"SELECT count(*) {_live(state)} AND s.user_id = :u"),
        {"u": user_id, "lease": state.limits.lease_seconds},
    ).scalar_one()
    return count


def user_streams(user_id: str | int) -> int:
    """How many streams ``user_id`` has open, on every worker and machine."""
    state = _checked(get_state())
    user = validate_user_id(user_id)
    with state.store.engine.connect() as conn:
        return count_user_streams(conn, state, user)


def is_online(user_id: str | int) -> bool:
    """Whether ``user_id`` has at least one open stream anywhere."""
    return user_streams(user_id) > 0


def who_reads(channel: str) -> ChannelPresence:
    """The users with an open stream subscribed to ``channel``, and the number of such streams."""
    state = _checked(get_state())
    (name,) = parse_channel(channel)
    params: dict[str, Any] = {"c": name, "lease": state.limits.lease_seconds}
    with state.store.engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT s.user_id, count(*) {_live(state)} AND :c = ANY(s.channels) GROUP BY s.user_id"),
            params,
        ).all()
    return ChannelPresence(name, sorted(user for user, _ in rows), sum(count for _, count in rows))


def channel_users(channel: str) -> list[str]:
    """The users (sorted) with an open stream subscribed to ``channel``."""
    return who_reads(channel).users


def parse_channel(channel: object) -> tuple[str, ...]:
    """One valid channel name (``InvalidInput`` otherwise)."""
    if not isinstance(channel, str) or not channel or "," in channel:
        raise InvalidInput(f"invalid channel {channel!r}: one channel name")
    return parse_channels(channel)
