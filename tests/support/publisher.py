"""Publish from the pytest process (a process separate from gunicorn) through the public API."""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    id: int
    event: str
    user_id: str | None
    channel: str | None

    def visible_to(self, user: str, channels: tuple[str, ...] = ()) -> bool:
        """The targeting rule (README "Publishing": a ``user_id`` reaches only that user's streams,
        a ``channel`` only the streams subscribed to it), from the point of view of one stream."""
        if self.user_id is not None and self.user_id != user:
            return False
        if self.channel is not None and self.channel not in channels:
            return False
        return True


def api(name: str) -> Any:
    """``from notifications import <name>``.

    If the package attribute is shadowed by a submodule of the same name (``notifications.publish``
    the module instead of the function), fall back to the function inside it so that one bug does
    not fail every integration test; ``test_publish_api.py::test_public_names`` reports it.
    """
    import notifications

    obj = getattr(notifications, name)
    if isinstance(obj, types.ModuleType):
        obj = getattr(obj, name)
    return obj


class Publisher:
    """``create_app({...})`` once; every call runs inside its own app context.

    Records every event it stored, so tests can compute what a stream should replay.
    """

    def __init__(self, database_url: str, secret: str, **config: Any) -> None:
        from app import create_app

        self.app = create_app({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret, **config})
        self.published: list[Published] = []
        self._lock = threading.Lock()

    def _record(self, event_id: str, event: str, user_id: Any, channel: str | None) -> int:
        assert isinstance(event_id, str) and event_id.isdigit() and int(event_id) > 0, (
            f"publish returned {event_id!r}, expected a decimal string of a positive integer"
        )
        with self._lock:
            self.published.append(Published(int(event_id), event, None if user_id is None else str(user_id), channel))
        return int(event_id)

    def notify(self, message: str, **kwargs: Any) -> int:
        with self.app.app_context():
            event_id = api("notify")(message, **kwargs)
        return self._record(event_id, "notification", kwargs.get("user_id"), kwargs.get("channel"))

    def broadcast_update(self, entity: str, action: str, payload: Any, **kwargs: Any) -> int:
        with self.app.app_context():
            event_id = api("broadcast_update")(entity, action, payload, **kwargs)
        return self._record(event_id, "update", kwargs.get("user_id"), kwargs.get("channel"))

    def publish(self, event: str, data: Any, **kwargs: Any) -> int:
        with self.app.app_context():
            event_id = api("publish")(event, data, **kwargs)
        return self._record(event_id, event, kwargs.get("user_id"), kwargs.get("channel"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a publish function by name without recording (for calls expected to raise)."""
        with self.app.app_context():
            return api(name)(*args, **kwargs)

    def sequence(self) -> None:
        """Deliver what this publisher queued, here and now: for databases no server runs on
        (with a server, its sequencer does it within milliseconds)."""
        from notifications.extension import get_state

        assert get_state(self.app).sequencer.deliver_now() is not None, "a running sequencer holds the lock"

    def stored(self, ids: list[int], timeout: float = 10.0) -> None:
        """Wait until the events ``ids`` are in the events table: moved there from the publish
        queue by the sequencer of a running server (``notifications.sequencer``)."""
        from sqlalchemy import text

        from notifications.extension import get_state

        from .checks import wait_until

        state = get_state(self.app)

        def found() -> bool:
            with state.store.engine.connect() as conn:
                count = conn.execute(
                    text(f"SELECT count(*) FROM {state.names.sql()} WHERE id = ANY(:ids)"), {"ids": list(ids)}
                ).scalar_one()
            return bool(count == len(set(ids)))

        wait_until(found, timeout, f"events {ids} delivered (a server's sequencer moves them)")

    def visible_ids(self, user: str, channels: tuple[str, ...] = (), after: int = 0) -> list[int]:
        with self._lock:
            return sorted(p.id for p in self.published if p.id > after and p.visible_to(user, channels))

    @property
    def newest(self) -> int:
        with self._lock:
            return max((p.id for p in self.published), default=0)
