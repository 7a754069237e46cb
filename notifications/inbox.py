"""The inbox, for server-side code: ``list``, ``unread_count``, ``mark_read``, ``mark_unread``,
``dismiss`` (``from notifications import inbox``; call them inside an app context).

A user's inbox holds the inbox notifications (``notify(..., inbox=True)``) that user's stream
would receive with the same ``channels``: broadcasts, the user's own, and those channels'. No
grant is checked here (the HTTP routes check them, ``inbox_views``). Ids are event ids, as
decimal strings or positive ints; ids that are not in the user's inbox are ignored.

Every change is one transaction: the new state, then an ``inbox`` event targeted to the user
(``{"type": "inbox", "action": ..., "ids" | "upTo" | "all": ..., "unread": N}``), so every open
stream of that user, on every worker and machine, learns it, and a reconnecting one replays it.
``unread`` is the count for the ``channels`` of the change. ``inbox`` is a reserved event name:
only this module publishes it.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy.exc import OperationalError

from .events import MAX_CHANNELS_PER_STREAM, make_event, validate_channel, validate_user_id
from .exceptions import InvalidInput
from .inbox_store import BIGGEST_ID, Row
from .publishing import append
from .state import get_state

MAX_IDS = 1000
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
EVENT = "inbox"
_RETRIES = 3  # a deadlock between two changes of one user's state is retried (PostgreSQL 40P01)

__all__ = ["Item", "Page", "dismiss", "list", "mark_read", "mark_unread", "unread_count"]


@dataclass(frozen=True)
class Item:
    """One notification of the inbox."""

    id: str
    data: dict[str, Any]
    created_at: str  # ISO 8601, UTC
    read: bool
    event: str = "notification"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "data": self.data, "createdAt": self.created_at, "read": self.read}


@dataclass(frozen=True)
class Page:
    """A page of the inbox, newest first; ``next`` is the ``before`` of the next page (None: last)."""

    items: tuple[Item, ...]
    unread: int
    next: str | None

    def as_json(self) -> dict[str, Any]:
        return {"items": [item.as_json() for item in self.items], "unread": self.unread, "next": self.next}


# -- validation (pure) -------------------------------------------------------------------------


def parse_id(value: object, what: str = "id", strings_only: bool = False) -> int:
    """An event id: a decimal string (or, unless ``strings_only``, an int) of a positive integer."""
    if isinstance(value, int) and not isinstance(value, bool) and not strings_only:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        raise InvalidInput(f"invalid {what} {value!r}: an event id, a decimal string")
    if not 0 < number <= BIGGEST_ID:
        raise InvalidInput(f"invalid {what} {value!r}: an event id, a positive integer")
    return number


def parse_ids(values: object, strings_only: bool = False) -> builtins.list[int]:
    """A list of 0 to 1,000 ids (repeats dropped)."""
    if not isinstance(values, builtins.list | tuple):
        raise InvalidInput("ids must be a list of event ids")
    if len(values) > MAX_IDS:
        raise InvalidInput(f"too many ids: at most {MAX_IDS} at once")
    return sorted({parse_id(v, strings_only=strings_only) for v in values})


def _channels(channels: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(validate_channel(c) for c in channels))
    if len(names) > MAX_CHANNELS_PER_STREAM:
        raise InvalidInput(f"too many channels: at most {MAX_CHANNELS_PER_STREAM}")
    return names


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"invalid limit {limit!r}: 1 to {MAX_LIMIT}")
    return limit


def _item(row: Row) -> Item:
    at = row.created_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Item(str(row.id), row.data, at, row.read)


# -- reading -----------------------------------------------------------------------------------


def list(  # noqa: A001 (the name of the operation; builtins.list inside this module)
    user_id: str | int,
    *,
    channels: Iterable[str] = (),
    limit: int = DEFAULT_LIMIT,
    before: str | int | None = None,
    unread: bool = False,
) -> Page:
    """The user's items newest first (at most ``limit``, 1-100), older than ``before``, only
    unread ones with ``unread``; dismissed ones never. With the unread count."""
    user, names, size = validate_user_id(user_id), _channels(channels), _limit(limit)
    start = None if before is None else parse_id(before, "before")
    store = get_state().inbox
    with store.reads.connect() as conn:
        rows, count = store.page(conn, user, names, size + 1, start, bool(unread))
    items = tuple(_item(r) for r in rows[:size])
    return Page(items, count, items[-1].id if len(rows) > size else None)


def unread_count(user_id: str | int, *, channels: Iterable[str] = ()) -> int:
    """How many unread items the user has (with these channels)."""
    user, names = validate_user_id(user_id), _channels(channels)
    store = get_state().inbox
    with store.reads.connect() as conn:
        return store.unread(conn, user, names)


# -- changing ----------------------------------------------------------------------------------


def mark_read(
    user_id: str | int,
    ids: Sequence[str | int] | None = None,
    *,
    up_to: str | int | None = None,
    all: bool = False,  # noqa: A002
    channels: Iterable[str] = (),
) -> int:
    """Mark ``ids`` read, or every item at or below ``up_to``, or ``all`` items (exactly one of
    the three); return the unread count."""
    if sum((ids is not None, up_to is not None, all is True)) != 1:
        raise InvalidInput("pass exactly one of ids, up_to or all=True")
    if ids is not None:
        return _change(user_id, channels, "read", ids=parse_ids(ids))
    return _change(user_id, channels, "read", up_to=None if all else parse_id(up_to, "up_to"))


def mark_unread(user_id: str | int, ids: Sequence[str | int], *, channels: Iterable[str] = ()) -> int:
    """Mark ``ids`` unread; return the unread count."""
    return _change(user_id, channels, "unread", ids=parse_ids(ids))


def dismiss(user_id: str | int, ids: Sequence[str | int], *, channels: Iterable[str] = ()) -> int:
    """Remove ``ids`` from this user's list and count (for this user only); return the unread count."""
    return _change(user_id, channels, "dismiss", ids=parse_ids(ids))


def _change(
    user_id: str | int,
    channels: Iterable[str],
    action: str,
    ids: builtins.list[int] | None = None,
    up_to: int | None = None,
) -> int:
    """Apply one change and publish its ``inbox`` event in one transaction (retried on a deadlock)."""
    user, names = validate_user_id(user_id), _channels(channels)
    store = get_state().inbox
    for attempt in range(_RETRIES):
        try:
            with store.engine.begin() as conn:
                detail: dict[str, Any]
                if ids is not None:
                    applied = store.mark(conn, user, names, ids, action) if ids else []
                    detail = {"ids": [str(i) for i in applied]}
                else:
                    upto = store.read_upto(conn, user, up_to)
                    detail = {"all": True} if up_to is None else {"upTo": str(upto)}
                    applied = [upto]
                count = store.unread(conn, user, names)
                if applied:
                    data = {"type": "inbox", "action": action, **detail, "unread": count}
                    append([make_event(EVENT, data, user_id=user, max_bytes=1 << 20)], connection=conn)
                return count
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != "40P01" or attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")
