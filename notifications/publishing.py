"""The publish API: ``notify``, ``broadcast_update``, ``publish`` and ``publish_many``.

Each validates its input (``ValueError``, nothing stored), stores the event with its NOTIFY and
returns the new id as a string. Call them inside an app context.

By default an event is stored in a short transaction of its own. Pass ``session=`` (an
SQLAlchemy ``Session``, Flask-SQLAlchemy's ``db.session`` included) or ``connection=`` (a Core
``Connection``) to join the app's own transaction instead: the event is delivered if and only if
that transaction commits, and not before. Joining takes no lock: no other publisher waits for
the app's transaction (see ``sequencer`` for the ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .events import Event, build_notification, build_update, make_event
from .exceptions import InvalidInput, PublishError
from .state import get_state

# ``inbox`` is the server's own read-state event (``notifications.inbox``): reserved, so a stream
# can trust that an ``inbox`` event comes from the service and not from a publisher.
RESERVED_EVENTS = frozenset({"heartbeat", "error", "reset", "token-expiring", "inbox"})

__all__ = ["PublishError", "broadcast_update", "notify", "publish", "publish_many"]


def build_event(
    name: object, data: Any, user_id: object, channel: object, max_bytes: int | None = None, inbox: object = False
) -> Event:
    """One validated event for the current app (reserved names and the payload cap included;
    ``max_bytes``: that cap, when the caller has read it already; ``inbox``: kept in the inbox)."""
    if name in RESERVED_EVENTS:
        raise InvalidInput(f"event name {name!r} is reserved for the stream itself")
    if max_bytes is None:
        max_bytes = get_state().settings.max_payload_bytes
    return make_event(name, data, user_id=user_id, channel=channel, max_bytes=max_bytes, inbox=inbox)


def parse_items(items: Sequence[object], user_key: str = "user_id") -> list[Event]:
    """Validate a batch, all or nothing: each item an object with ``event`` and ``data``, and
    optionally ``user_key`` (``user_id`` in Python, ``userId`` over HTTP), ``channel`` and
    ``inbox`` (true: a notification kept in the inbox too); any other key is an error (a
    misspelt target must never broadcast)."""
    keys = frozenset({"event", "data", user_key, "channel", "inbox"})
    cap = get_state().settings.max_payload_bytes
    built = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "event" not in item or "data" not in item:
            raise InvalidInput(f"item {index}: expected an object with 'event' and 'data'")
        unknown = item.keys() - keys
        if unknown:
            raise InvalidInput(f"item {index}: unknown keys {sorted(unknown)}: use {', '.join(sorted(keys))}")
        try:
            built.append(
                build_event(
                    item["event"], item["data"], item.get(user_key), item.get("channel"), cap, item.get("inbox", False)
                )
            )
        except InvalidInput as exc:
            raise type(exc)(f"item {index}: {exc}") from None
    return built


def append(events: Sequence[Event], session: Any = None, connection: Connection | None = None) -> list[str]:
    """Store ``events`` (one transaction of their own, or the app's: ``session=`` /
    ``connection=``); return their ids. The one way events are stored, and counted."""
    state = get_state()
    if session is not None and connection is not None:
        raise InvalidInput("pass session= or connection=, not both")
    if session is not None:
        if not hasattr(session, "connection"):
            raise InvalidInput("session= must be an SQLAlchemy Session (or Flask-SQLAlchemy's db.session)")
        connection = session.connection()
    try:
        ids = state.store.append(events) if connection is None else state.store.append_in(connection, events)
    except SQLAlchemyError as exc:
        raise PublishError(f"could not store the event: {type(exc).__name__}") from exc
    metrics.EVENTS_PUBLISHED.inc(len(ids))
    if connection is None:
        state.nudge_sequencer()  # committed: if this process is the sequencer, no need to poll
    return ids


def notify(
    message: str,
    *,
    notification_type: str = "info",
    title: str | None = None,
    duration: int | None = None,
    user_id: str | int | None = None,
    channel: str | None = None,
    inbox: bool = False,
    session: Any = None,
    connection: Connection | None = None,
) -> str:
    """Store a ``notification`` (a toast) for everyone, one user or one channel; return its id.
    ``inbox=True`` keeps it in the inbox of everyone it reaches too (``notifications.inbox``)."""
    data = build_notification(message, notification_type, title, duration)
    return append([build_event("notification", data, user_id, channel, inbox=inbox)], session, connection)[0]


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
    return append([build_event("update", data, user_id, channel)], session, connection)[0]


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
    return append([build_event(event, data, user_id, channel)], session, connection)[0]


def publish_many(
    events: list[dict[str, Any]], *, session: Any = None, connection: Connection | None = None
) -> list[str]:
    """Store many events in one transaction with one NOTIFY (all or nothing); return their ids.

    Each item is ``{"event": ..., "data": ..., "user_id"?: ..., "channel"?: ..., "inbox"?: bool}``.
    """
    built = parse_items(events)
    if not built:
        return []
    return append(built, session, connection)
