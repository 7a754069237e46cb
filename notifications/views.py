"""The blueprint: ``GET /stream`` (Server-Sent Events), ``POST /ticket`` and ``POST /publish``.

A refused stream answers ``200`` with a long jittered ``retry:`` and one ``error`` event (a
deliberate choice): any other status makes a browser's EventSource give up for good and hides
the reason. ``NOTIFICATIONS_HTTP_ERRORS`` switches to real statuses for fetch-based clients.
An admitted stream is served by ``stream.StreamSession``; nothing of the request context is
kept: everything it needs is read up front.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .auth import AccessError, Identity, authorize_publish, authorize_stream
from .events import parse_channels, serialize, validate_user_id
from .exceptions import InvalidInput, PayloadTooLarge, PublishError
from .limits import LimitsUnavailable
from .publishing import append, parse_items
from .sse import encode, jittered
from .state import State, get_state
from .stream import StartResponse, StreamSession, server_socket
from .tickets import issue, redeem
from .transport import Subscriber, stream_headers

log = logging.getLogger("notifications.stream")

blueprint = Blueprint("notifications", __name__)


def _event_stream(body: Iterator[bytes], status: int = 200) -> Response:
    return Response(body, status=status, headers=stream_headers(), direct_passthrough=True)


def refusal(state: State, error: AccessError) -> Response:
    """A refused stream: long jittered ``retry:``, one ``error`` event, the end."""

    def body() -> Iterator[bytes]:
        yield encode(retry=jittered(state.settings.refusal_retry_ms)) + encode(
            event="error", data=serialize(error.as_data())
        )

    log.info("stream refused: %s %s", error.code, error.message)
    metrics.REFUSALS.labels(str(error.code)).inc()
    response = _event_stream(body(), error.code if state.settings.http_errors else 200)
    retry_after = error.detail.get("retryAfter")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@blueprint.get("/stream")
def stream() -> Response:
    state = get_state()
    try:
        ticket = request.args.get("ticket")
        identity = redeem(state.store.engine, state.names, ticket) if ticket is not None else state.identify()
        session = admit(state, identity, request.args, request.environ)
    except AccessError as exc:
        return refusal(state, exc)
    except SQLAlchemyError:
        return refusal(state, AccessError(503, "tickets are unavailable: the database is unreachable"))
    return StreamResponse(session)


def admit(state: State, identity: Identity, args: Mapping[str, str], environ: dict[str, Any]) -> StreamSession:
    """Check a stream's parameters, grants and limits; raise ``AccessError`` or return its session."""
    try:
        channels = parse_channels(args.get("channels"))
        user_param = args.get("userId")
        user_id = None if user_param is None else validate_user_id(user_param)
    except ValueError as exc:
        raise AccessError(400, str(exc)) from None
    reader = authorize_stream(identity, user_id, channels, state.settings.public_channels)
    if not state.ensure_listening():
        raise AccessError(503, "notifications are unavailable: the database is unreachable")
    state.revocations.check(identity)
    lease = _admit(state, identity.subject, environ.get("REMOTE_ADDR"), channels)
    last_id = environ.get("HTTP_LAST_EVENT_ID")
    if last_id is None:
        last_id = args.get("lastEventId")
    subscriber = Subscriber(reader, channels, state.settings.queue_size, server_socket(environ), identity.subject)
    return StreamSession(state, subscriber, identity, last_id, lease)


class StreamResponse(Response):
    """A stream's response: a GET is served by ``StreamSession.serve`` (detached when it can),
    with the headers Flask and its extensions (CORS) gave it."""

    def __init__(self, session: StreamSession) -> None:
        super().__init__(session.run(), headers=stream_headers(), direct_passthrough=True)
        self.session = session
        # A body that never runs (HEAD) releases the stream's slot when werkzeug closes it.
        self.call_on_close(session.release)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return super().__call__(environ, start_response)
        headers = self.get_wsgi_headers(environ).to_wsgi_list()
        return self.session.serve(environ, start_response, headers)  # type: ignore[no-any-return]


def _admit(state: State, subject: str, address: str | None, channels: tuple[str, ...]) -> int | None:
    """Apply the connection limits; when the database is away, let the stream in unlimited."""
    try:
        return state.limits.admit(subject, address, channels)
    except LimitsUnavailable as exc:
        log.warning("%s: admitting the stream", exc)
        return None


@blueprint.errorhandler(AccessError)
def _refused(exc: AccessError) -> tuple[Response, int]:
    """Every refusal of a JSON route: ``{"error", "code", ...detail}`` with that status."""
    return jsonify(exc.as_data()), exc.code


@blueprint.errorhandler(InvalidInput)
def _invalid(exc: InvalidInput) -> tuple[Response, int]:
    """Invalid events: 422 (413 when too large), nothing stored."""
    code = 413 if isinstance(exc, PayloadTooLarge) else 422
    return jsonify({"error": str(exc), "code": code}), code


@blueprint.errorhandler(PublishError)
def _unavailable(exc: PublishError) -> tuple[Response, int]:
    current_app.logger.error("publish failed: %s", exc)
    return jsonify({"error": "the event could not be stored", "code": 503}), 503


@blueprint.post("/ticket")
def ticket() -> tuple[Response, int]:
    """Trade the real token (header or cookie) for a short-lived, single-use stream ticket."""
    state = get_state()
    identity = state.authenticate(("headers", "cookies"))
    ttl = state.settings.ticket_ttl
    if identity.expires_at is not None:
        ttl = max(0.0, min(ttl, identity.expires_at - time.time()))
    try:
        value = issue(state.store.engine, state.names, identity, ttl)
    except SQLAlchemyError:
        raise AccessError(503, "tickets are unavailable: the database is unreachable") from None
    return jsonify({"ticket": value, "expiresIn": int(ttl)}), 201


def json_body(cap: int, shape: str, wrong_type: int = 415) -> Any:
    """The request's JSON body, read up to ``cap`` bytes: ``wrong_type`` when it is not sent as
    ``application/json``, 413 when larger than ``cap``, 400 when it is not JSON (``shape``: what
    it should be, for the message)."""
    if not request.is_json:
        raise AccessError(wrong_type, "send the body as Content-Type: application/json")
    if request.content_length is not None and request.content_length > cap:
        raise AccessError(413, f"the body is larger than {cap} bytes")
    raw = request.stream.read(cap + 1)
    if len(raw) > cap:
        raise AccessError(413, f"the body is larger than {cap} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise AccessError(400, f"the body must be JSON: {shape}") from None


@blueprint.post("/publish")
def publish_http() -> tuple[Response, int]:
    """One event object, or an array of them (all or nothing), for services that are not Python."""
    state = get_state()
    identity = state.authenticate(("headers",))
    body = json_body(state.settings.max_body_bytes, "an event object or an array of them")
    items = body if isinstance(body, list) else [body]
    if not items:
        raise AccessError(422, "the array of events is empty")
    events = parse_items(items, user_key="userId")
    for event in events:
        authorize_publish(identity, event.user_id, event.channel)
    ids = append(events)
    if isinstance(body, list):
        return jsonify({"ids": ids}), 201
    return jsonify({"id": ids[0]}), 201
