"""The package's exceptions: one base class, catch it to catch them all."""

from __future__ import annotations


class NotificationsError(Exception):
    """Base class of every error this package raises on purpose."""


class PublishError(NotificationsError):
    """The event could not be stored (for example, the database is unreachable)."""
