"""Real-time notifications for Flask over Server-Sent Events, stored in PostgreSQL.

The public names load on first use, so ``notifications.embedded`` can be imported by the
gunicorn master without importing Flask, JWT or gevent code before the workers patch it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import presence as presence
    from .auth import Identity as Identity
    from .control import disconnect as disconnect
    from .control import revoke_tokens as revoke_tokens
    from .exceptions import NotificationsError as NotificationsError
    from .exceptions import PublishError as PublishError
    from .extension import Notifications as Notifications
    from .publishing import broadcast_update as broadcast_update
    from .publishing import notify as notify
    from .publishing import publish as publish
    from .publishing import publish_many as publish_many

_HOMES = {
    "Identity": ".auth",
    "Notifications": ".extension",
    "NotificationsError": ".exceptions",
    "PublishError": ".exceptions",
    "broadcast_update": ".publishing",
    "disconnect": ".control",
    "revoke_tokens": ".control",
    "notify": ".publishing",
    "publish": ".publishing",
    "publish_many": ".publishing",
}
_MODULES = ("presence",)
__all__ = sorted([*_HOMES, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return import_module(f".{name}", __name__)
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'notifications' has no attribute {name!r}")
