"""The package's exceptions: one base class, catch it to catch them all.

Each also derives from the built-in exception a caller would expect (``ValueError`` for bad
input and configuration, ``RuntimeError`` for a wrong set-up), so ``except ValueError`` keeps
working where the contract promises it.
"""

from __future__ import annotations


class NotificationsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(NotificationsError, ValueError):
    """An event, channel list, user id, duration or rate is not valid; nothing was stored."""


class PayloadTooLarge(InvalidInput):
    """An event's data is larger than ``NOTIFICATIONS_MAX_PAYLOAD_BYTES`` (HTTP publish: 413)."""


class ConfigError(NotificationsError, ValueError):
    """A configuration value is invalid; the message names the key and what it accepts."""


class SetupError(NotificationsError, RuntimeError):
    """The extension is used where it is not set up (no app context, registered twice, ...)."""


class PublishError(NotificationsError):
    """The event could not be stored (for example, the database is unreachable)."""
