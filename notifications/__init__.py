"""Real-time notifications for Flask over Server-Sent Events, stored in PostgreSQL.

The public names load on first use, so ``notifications.embedded`` can be imported by the
gunicorn master without importing Flask, JWT or gevent code before the workers patch it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exceptions import NotificationsError as NotificationsError
    from .exceptions import PublishError as PublishError
    from .extension import Notifications as Notifications
    from .publish import broadcast_update as broadcast_update
    from .publish import notify as notify
    from .publish import publish as publish
    from .publish import publish_many as publish_many

_HOMES = {
    "Notifications": ".extension",
    "NotificationsError": ".exceptions",
    "PublishError": ".exceptions",
    "broadcast_update": ".publish",
    "notify": ".publish",
    "publish": ".publish",
    "publish_many": ".publish",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'notifications' has no attribute {name!r}")
