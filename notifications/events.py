"""Events and their validation (pure): names, channels, durations and the built-in event types.

Every function raises ``ValueError`` with a message that names the bad value, so callers can
turn it into a clear error for the user.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .exceptions import InvalidInput, PayloadTooLarge

NOTIFICATION_TYPES = ("success", "error", "warning", "info")
UPDATE_ACTIONS = ("created", "updated", "deleted")
DEFAULT_DURATION_MS = 5000
MAX_CHANNELS_PER_STREAM = 50
MAX_NAME_LENGTH = 128
MAX_USER_ID_LENGTH = 256

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event, ready to store: ``data`` is compact JSON text."""

    name: str
    data: str
    user_id: str | None = None
    channel: str | None = None
    inbox: bool = False  # also kept in the inbox (a ``notification`` whose data carries ``"inbox": true``)


def validate_event_name(name: object) -> str:
    """An event name: letters, digits, ``_ - . :``, 1-128 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid event name {name!r}: use 1-{MAX_NAME_LENGTH} letters, digits, '_', '-', '.', ':'")
    return name


def validate_channel(name: object) -> str:
    """A channel name: letters, digits, ``_ - . :``, 1-128 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid channel name {name!r}: use 1-{MAX_NAME_LENGTH} letters, digits, '_', '-', '.', ':'"
        )
    return name


def validate_user_id(user_id: object) -> str:
    """A user id: a non-empty string (numbers are accepted and compared as strings)."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise InvalidInput(f"invalid user id {user_id!r}: expected a string")
    text = str(user_id)
    if not text or len(text) > MAX_USER_ID_LENGTH or "\x00" in text:
        raise InvalidInput(f"invalid user id {text[:40]!r}: 1-{MAX_USER_ID_LENGTH} characters, no NUL")
    return text


def parse_channels(raw: str | None) -> tuple[str, ...]:
    """Parse ``?channels=a,b``: empty means none; at most 50, each a valid name, no repeats."""
    if raw is None or raw.strip() == "":
        return ()
    names = [part.strip() for part in raw.split(",")]
    if len(names) > MAX_CHANNELS_PER_STREAM:
        raise InvalidInput(f"too many channels: at most {MAX_CHANNELS_PER_STREAM} per stream")
    return tuple(dict.fromkeys(validate_channel(name) for name in names))


def parse_duration(value: str | float | int) -> float:
    """Seconds as a number, or a number with a unit: ``30s``, ``15m``, ``6h``, ``7d``."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise InvalidInput(f"invalid duration {value!r}: use seconds or 30s, 15m, 6h, 7d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"invalid duration {value!r}: must be a non-negative number")
    return seconds


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_contains_nul(v) for v in value)
    return False


def serialize(data: Any, max_bytes: int = 65536) -> str:
    """Compact JSON for ``data``; ``ValueError`` if it is not JSON, holds a NUL or is too big."""
    try:
        text = _to_json(data)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"data is not JSON-serialisable: {exc}") from exc
    if "\\u0000" in text and _contains_nul(data):  # JSON writes a NUL as \u0000: look closer only then
        raise InvalidInput("data contains a NUL character, which PostgreSQL cannot store")
    if len(text) * 4 > max_bytes:  # at most 4 UTF-8 bytes a character: count them only then
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise PayloadTooLarge(f"data is {size} bytes, more than the {max_bytes}-byte limit")
    return text


_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def build_notification(
    message: object,
    notification_type: object = "info",
    title: object = None,
    duration: object = None,
) -> dict[str, Any]:
    """The data of a ``notification`` event."""
    if not isinstance(message, str) or not message:
        raise InvalidInput("notification message must be a non-empty string")
    if notification_type not in NOTIFICATION_TYPES:
        raise InvalidInput(f"invalid notification_type {notification_type!r}: one of {', '.join(NOTIFICATION_TYPES)}")
    if title is not None and not isinstance(title, str):
        raise InvalidInput("notification title must be a string")
    if duration is None:
        duration = DEFAULT_DURATION_MS
    if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
        raise InvalidInput(f"invalid duration {duration!r}: a non-negative number of milliseconds")
    data: dict[str, Any] = {"type": "notification", "notificationType": notification_type}
    if title is not None:
        data["title"] = title
    data["message"] = message
    data["duration"] = duration
    return data


def build_update(entity: object, action: object, payload: object) -> dict[str, Any]:
    """The data of an ``update`` event."""
    if not isinstance(entity, str) or not entity:
        raise InvalidInput("update entity must be a non-empty string")
    if action not in UPDATE_ACTIONS:
        raise InvalidInput(f"invalid action {action!r}: one of {', '.join(UPDATE_ACTIONS)}")
    if not isinstance(payload, dict):
        raise InvalidInput("update payload must be a JSON object (a dict)")
    return {"type": "update", "entity": entity, "action": action, "payload": payload}


def make_event(
    name: object,
    data: Any,
    *,
    user_id: object = None,
    channel: object = None,
    max_bytes: int = 65536,
    inbox: object = False,
) -> Event:
    """Validate everything about one event and return it ready to store (``inbox``: a
    ``notification`` kept in the inbox too; its data gets ``"inbox": true``)."""
    if inbox is not False and inbox is not True:
        raise InvalidInput(f"invalid inbox {inbox!r}: expected true or false")
    if inbox:
        data = inbox_data(name, data)
    return Event(
        name=validate_event_name(name),
        data=serialize(data, max_bytes),
        user_id=None if user_id is None else validate_user_id(user_id),
        channel=None if channel is None else validate_channel(channel),
        inbox=inbox,
    )


def inbox_data(name: object, data: Any) -> dict[str, Any]:
    """The data of an inbox notification: a ``notification`` object with a message, marked
    ``"inbox": true``."""
    if name != "notification":
        raise InvalidInput(f"only a 'notification' can go into the inbox, not {name!r}")
    if not isinstance(data, dict) or not isinstance(data.get("message"), str) or not data["message"]:
        raise InvalidInput("an inbox notification's data must be an object with a non-empty 'message'")
    return {**data, "inbox": True}
