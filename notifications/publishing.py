"""The publish API: ``notify``, ``broadcast_update`` and ``publish``.

Each validates its input (``ValueError``, nothing stored), stores the event with its NOTIFY in
one transaction and returns the new id as a string. Call them inside an app context.
"""

from __future__ import annotations

from typing import Any

from .events import Event, build_notification, build_update, make_event
from .exceptions import PublishError
from .extension import get_state

RESERVED_EVENTS = frozenset({"heartbeat", "error", "reset", "token-expiring"})

__all__ = ["PublishError", "broadcast_update", "notify", "publish", "publish_many"]


def _event(name: str, data: Any, user_id: object, channel: object) -> Event:
    state = get_state()
    return make_event(
        name, data, user_id=user_id, channel=channel, max_bytes=state.settings.max_payload_bytes
    )


def notify(
    message: str,
    *,
    notification_type: str = "info",
    title: str | None = None,
    duration: int | None = None,
    user_id: str | int | None = None,
    channel: str | None = None,
) -> str:
    """Store a ``notification`` (a toast) for everyone, one user or one channel; return its id."""
    data = build_notification(message, notification_type, title, duration)
    return get_state().append([_event("notification", data, user_id, channel)])[0]


def broadcast_update(
    entity: str,
    action: str,
    payload: dict[str, Any],
    *,
    user_id: str | int | None = None,
    channel: str | None = None,
) -> str:
    """Store an ``update`` (``created``/``updated``/``deleted`` of an entity); return its id."""
    data = build_update(entity, action, payload)
    return get_state().append([_event("update", data, user_id, channel)])[0]


def publish(event: str, data: Any, *, user_id: str | int | None = None, channel: str | None = None) -> str:
    """Store a custom event (any JSON ``data``); return its id."""
    if event in RESERVED_EVENTS:
        raise ValueError(f"event name {event!r} is reserved for the stream itself")
    return get_state().append([_event(event, data, user_id, channel)])[0]


def publish_many(events: list[dict[str, Any]]) -> list[str]:
    """Store many events in one transaction with one NOTIFY (all or nothing); return their ids.

    Each item is ``{"event": ..., "data": ..., "user_id"?: ..., "channel"?: ...}``.
    """
    built = []
    for index, item in enumerate(events):
        name = item.get("event")
        if name in RESERVED_EVENTS:
            raise ValueError(f"item {index}: event name {name!r} is reserved for the stream itself")
        try:
            built.append(
                _event(
                    str(name) if name is not None else "",
                    item.get("data"),
                    item.get("user_id"),
                    item.get("channel"),
                )
            )
        except ValueError as exc:
            raise ValueError(f"item {index}: {exc}") from None
    if not built:
        return []
    return get_state().append(built)
