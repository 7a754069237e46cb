"""The presence and control routes of the blueprint: ``GET /presence``, ``POST /disconnect``
and ``POST /revoke`` (``Authorization: Bearer``; JSON in and out, errors ``{"error", "code"}``)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from . import control, presence
from .auth import AccessError, Identity, authorize_publish, matches
from .events import validate_user_id
from .exceptions import InvalidInput
from .state import get_state
from .views import blueprint, json_body

MAX_CONTROL_BODY = 8192


@blueprint.get("/presence")
def presence_route() -> tuple[Response, int]:
    """``?userId=``: is that user online; ``?channel=``: who reads that channel."""
    identity = get_state().authenticate(("headers",))
    user_id, channel = request.args.get("userId"), request.args.get("channel")
    if (user_id is None) == (channel is None):
        raise AccessError(400, "ask about one userId or one channel")
    try:
        if user_id is not None:
            user = validate_user_id(user_id)
            _may_watch(identity, f"user:{user}", user == identity.subject)
            streams = presence.user_streams(user)
            return jsonify({"userId": user, "online": streams > 0, "streams": streams}), 200
        assert channel is not None
        (name,) = presence.parse_channel(channel)
        _may_watch(identity, name, False)
        found = presence.who_reads(name)
        return jsonify({"channel": found.channel, "users": found.users, "streams": found.streams}), 200
    except presence.PresenceOff as exc:
        raise AccessError(404, str(exc)) from None
    except InvalidInput as exc:
        raise AccessError(400, str(exc)) from None
    except SQLAlchemyError:
        raise AccessError(503, "presence is unavailable: the database is unreachable") from None


def _may_watch(identity: Identity, target: str, self_: bool) -> None:
    if not self_ and not matches(identity.subscribe, target):
        raise AccessError(403, f"not allowed to see the presence of {target!r}", target=target)


@blueprint.post("/disconnect")
def disconnect_route() -> tuple[Response, int]:
    """End every stream of ``userId`` (a publish grant covering ``user:<id>``)."""
    user, body = _target()
    try:
        reason = control.validate_reason(body.get("reason"))
        streams = control.disconnect(user, reason)
    except InvalidInput as exc:
        raise AccessError(400, str(exc)) from None
    except SQLAlchemyError:
        raise AccessError(503, "the database is unreachable") from None
    return jsonify({"streams": streams}), 200


@blueprint.post("/revoke")
def revoke_route() -> tuple[Response, int]:
    """Void ``userId``'s tokens issued before now and end their streams (same grant)."""
    user, _ = _target()
    try:
        streams = control.revoke_tokens(user)
    except SQLAlchemyError:
        raise AccessError(503, "the database is unreachable") from None
    return jsonify({"streams": streams}), 200


def _target() -> tuple[str, dict[str, Any]]:
    """The caller may act on the body's ``userId``: the body and the user id, checked."""
    identity = get_state().authenticate(("headers",))
    body = json_body(MAX_CONTROL_BODY, '{"userId": "..."}')
    if not isinstance(body, dict):
        raise AccessError(400, 'the body must be a JSON object {"userId": "..."}')
    if not isinstance(body.get("userId"), str):
        raise AccessError(400, "userId must be a string")
    try:
        user = validate_user_id(body["userId"])
    except InvalidInput as exc:
        raise AccessError(400, str(exc)) from None
    authorize_publish(identity, user, None)
    return user, body
