"""The inbox routes, on the notifications blueprint (DESIGN §7):

* ``GET /inbox?limit=&before=&unread=&userId=&channels=`` → ``{"items", "unread", "next"}``
* ``GET /inbox/count?userId=&channels=`` → ``{"unread": N}``
* ``POST /inbox/read`` ``{"ids": [...]}`` | ``{"upTo": "<id>"}`` | ``{"all": true}``,
  ``POST /inbox/unread`` and ``POST /inbox/dismiss`` ``{"ids": [...]}`` → ``{"unread": N}``

Auth is ``Authorization: Bearer`` or the JWT cookie (flask-jwt-extended checks the CSRF header of
a cookie POST when CSRF protection is on), never ``?token=``. ``userId`` and ``channels`` (on
the POSTs too) follow the stream's rules and grants (``authorize_stream``). Every refusal is
``{"error", "code"}`` with that status: 400 for malformed input, 401, 403, 503.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from . import inbox
from .auth import AccessError, authorize_stream
from .events import parse_channels, validate_user_id
from .exceptions import InvalidInput, PublishError
from .state import get_state
from .views import blueprint, json_body

MAX_BODY_BYTES = 256 * 1024  # 1,000 ids fit many times over: more ids is a 400, not a 413
_SHAPES = {"ids": '{"ids": ["<id>", ...]}', "upTo": '{"upTo": "<id>"}', "all": '{"all": true}'}
_CHANGES: dict[str, Callable[..., int]] = {"unread": inbox.mark_unread, "dismiss": inbox.dismiss}


@contextmanager
def _answering() -> Iterator[None]:
    """Invalid input is 400, an unreachable database 503."""
    try:
        yield
    except InvalidInput as exc:
        raise AccessError(400, str(exc)) from None
    except (SQLAlchemyError, PublishError):
        raise AccessError(503, "the inbox is unavailable: the database is unreachable") from None


def _reader() -> tuple[str, tuple[str, ...]]:
    """The caller's token (401), then whose inbox and which channels (400), then the grants (403)."""
    state = get_state()
    identity = state.identify(("headers", "cookies"))
    with _answering():
        channels = parse_channels(request.args.get("channels"))
        user_param = request.args.get("userId")
        user_id = None if user_param is None else validate_user_id(user_param)
    return authorize_stream(identity, user_id, channels, state.settings.public_channels), channels


def _flag(name: str) -> bool:
    value = request.args.get(name, "").strip().lower()
    if value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise AccessError(400, f"invalid {name} {value!r}: 1 or 0")


def _limit() -> int:
    value = request.args.get("limit")
    if value is None:
        return inbox.DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= inbox.MAX_LIMIT):
        raise AccessError(400, f"invalid limit {value[:40]!r}: 1 to {inbox.MAX_LIMIT}")
    return int(value)


def _body(allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of a POST: exactly one of the ``allowed`` keys (anything else is 400)."""
    shapes = " or ".join(_SHAPES[k] for k in allowed)
    body = json_body(MAX_BODY_BYTES, shapes, wrong_type=400)
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in allowed:
        raise AccessError(400, f"the body must be {shapes}")
    if "all" in body and body["all"] is not True:
        raise AccessError(400, f"the body must be {shapes}")
    return body


@blueprint.get("/inbox")
def inbox_list() -> tuple[Response, int]:
    """A page of the caller's (or a granted user's) inbox, newest first."""
    user, channels = _reader()
    limit, unread = _limit(), _flag("unread")
    with _answering():
        before = request.args.get("before")
        start = None if before is None else inbox.parse_id(before, "before", strings_only=True)
        page = inbox.list(user, channels=channels, limit=limit, before=start, unread=unread)
    return jsonify(page.as_json()), 200


@blueprint.get("/inbox/count")
def inbox_count() -> tuple[Response, int]:
    """The unread count."""
    user, channels = _reader()
    with _answering():
        return jsonify({"unread": inbox.unread_count(user, channels=channels)}), 200


@blueprint.post("/inbox/read")
def inbox_read() -> tuple[Response, int]:
    """Mark ids read, or every item up to an id, or all."""
    user, channels = _reader()
    body = _body(("ids", "upTo", "all"))
    with _answering():
        if "ids" in body:
            count = inbox.mark_read(user, inbox.parse_ids(body["ids"], strings_only=True), channels=channels)
        elif "upTo" in body:
            up_to = inbox.parse_id(body["upTo"], "upTo", strings_only=True)
            count = inbox.mark_read(user, up_to=up_to, channels=channels)
        else:
            count = inbox.mark_read(user, all=True, channels=channels)
    return jsonify({"unread": count}), 200


@blueprint.post("/inbox/<any(unread, dismiss):action>")
def inbox_change(action: str) -> tuple[Response, int]:
    """Mark ids unread, or dismiss them (for this user only)."""
    user, channels = _reader()
    body = _body(("ids",))
    with _answering():
        count = _CHANGES[action](user, inbox.parse_ids(body["ids"], strings_only=True), channels=channels)
    return jsonify({"unread": count}), 200
