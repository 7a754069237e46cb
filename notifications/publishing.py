"""The publish API: ``notify``, ``broadcast_update``, ``publish`` and ``publish_many``.

Each validates its input (``ValueError``, nothing stored), stores the event with its NOTIFY and
returns the new id as a string. Call them inside an app context.

By default an event is stored in a short transaction of its own. Pass ``session=`` (an
SQLAlchemy ``Session``, Flask-SQLAlchemy's ``db.session`` included) or ``connection=`` (a Core
``Connection``) to join the app's own transaction instead: the event is delivered if and only if
that transaction commits, and not before. Joining takes the publish lock until the commit, so
publish last, right before committing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .events import Event, build_notification, build_update, make_event
from .exceptions import PublishError
from .extension import get_state

RESERVED_EVENTS = frozenset({"heartbeat", "error", "reset", "token-expiring"})
_ITEM_KEYS = frozenset({"event", "data", "user_id", "channel"})

__all__ = ["PublishError", "broadcast_update", "notify", "publish", "publish_many"]


def build_event(name: object, data: Any, user_id: object, channel: object, max_bytes: int | None = None) -> Event:
    """One validated event for the current app (reserved names and the payload cap included;
    ``max_bytes``: that cap, when the caller has read it already)."""
    if name in RESERVED_EVENTS:
        raise ValueError(f"event name {name!r} is reserved for the stream itself")
    if max_bytes is None:
        max_bytes = get_state().settings.max_payload_bytes
    return make_event(name, data, user_id=user_id, channel=channel, max_bytes=max_bytes)


def _append(events: list[Event], session: Any, connection: Connection | None) -> list[str]:
    state = get_state()
    if session is not None and connection is not None:
        raise ValueError("pass session= or connection=, not both")
    if session is not None:
        if not hasattr(session, "connection"):
            raise ValueError("session= must be an SQLAlchemy Session (or Flask-SQLAlchemy's db.session)")
        connection = session.connection()
    if connection is None:
        return state.append(events)
    try:
        ids = state.store.append_in(connection, events)
    except SQLAlchemyError as exc:
        raise PublishError(f"could not store the event: {type(exc).__name__}") from exc
    metrics.EVENTS_PUBLISHED.inc(len(ids))
    return ids


def notify(
    message: str,
    *,
    notification_type: str = "info",
    title: str | None = None,
    duration: int | None = None,
    user_id: str | int | None = None,
    channel: str | None = None,
    session: Any = None,
    connection: Connection | None = None,
) -> str:
    """Store a ``notification`` (a toast) for everyone, one user or one channel; return its id."""
    data = build_notification(message, notification_type, title, duration)
    return _append([build_event("notification", data, user_id, channel)], session, connection)[0]


def broadcast_update(
    entity: str,
    action: str,
    payload: dict[str, Any],
    *,
    user_id: str | int | None = None,
    channel: str | None = None,
    session: Any = None,
    connection: Connection | None = None,
) -> str:
    """Store an ``update`` (``created``/``updated``/``deleted`` of an entity); return its id."""
    data = build_update(entity, action, payload)
    return _append([build_event("update", data, user_id, channel)], session, connection)[0]


def publish(
    event: str,
    data: Any,
    *,
    user_id: str | int | None = None,
    channel: str | None = None,
    session: Any = None,
    connection: Connection | None = None,
) -> str:
    """Store a custom event (any JSON ``data``); return its id."""
    return _append([build_event(event, data, user_id, channel)], session, connection)[0]


def publish_many(
    events: list[dict[str, Any]], *, session: Any = None, connection: Connection | None = None
) -> list[str]:
    """Store many events in one transaction with one NOTIFY (all or nothing); return their ids.

    Each item is ``{"event": ..., "data": ..., "user_id"?: ..., "channel"?: ...}``.
    """
    built = []
    cap = get_state().settings.max_payload_bytes
    for index, item in enumerate(events):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected a dict with 'event' and 'data'")
        unknown = item.keys() - _ITEM_KEYS
        if unknown:  # a misspelt "user_id" (or the HTTP shape's "userId") must not broadcast
            raise ValueError(f"item {index}: unknown keys {sorted(unknown)}: use {', '.join(sorted(_ITEM_KEYS))}")
        try:
            event = build_event(item.get("event"), item.get("data"), item.get("user_id"), item.get("channel"), cap)
        except ValueError as exc:
            raise type(exc)(f"item {index}: {exc}") from None
        built.append(event)
    if not built:
        return []
    return _append(built, session, connection)
