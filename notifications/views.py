"""The blueprint: ``GET /stream`` (Server-Sent Events) and ``POST /publish``.

Deliberate choices, do not "fix" them:
* A refused stream answers ``200`` with a long jittered ``retry:`` and one ``error`` event:
  any other status makes a browser's EventSource give up for good and hides the reason.
  ``NOTIFICATIONS_HTTP_ERRORS`` switches to real statuses for fetch-based clients.
* ``retry:`` is yielded before anything touches the database: WSGI sends the headers with the
  first body chunk, and EventSource fires ``open`` only then.
* The stream subscribes to live events *before* it reads the replay, and drops duplicates by id.
* The generator keeps no request context alive: everything it needs is read up front.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .auth import AccessError, Identity, authenticate, authorize_publish, authorize_stream
from .events import parse_channels, serialize, validate_user_id
from .extension import State, get_state
from .fanout import Subscriber, chunked
from .publishing import PublishError, build_event
from .sse import encode
from .tickets import issue, redeem

log = logging.getLogger("notifications.stream")

blueprint = Blueprint("notifications", __name__)

CONNECT_MESSAGE = {
    "type": "notification",
    "notificationType": "info",
    "message": "Connected to notification stream",
    "duration": 5000,
}
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def jittered(ms: int) -> int:
    """``ms`` ±50 %, so a crowd of clients does not reconnect in step."""
    return max(1, int(ms * random.uniform(0.5, 1.5)))


def _event_stream(body: Iterator[bytes], status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/event-stream", direct_passthrough=True)
    response.headers.update(STREAM_HEADERS)
    return response


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


def parse_last_event_id(raw: str) -> int | None:
    """A last event id is a non-negative decimal integer; anything else is None."""
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


@blueprint.get("/stream")
def stream() -> Response:
    state = get_state()
    try:
        ticket = request.args.get("ticket")
        identity = redeem(state.store.engine, state.names, ticket) if ticket is not None else state.identify()
        try:
            channels = parse_channels(request.args.get("channels"))
            user_param = request.args.get("userId")
            user_id = None if user_param is None else validate_user_id(user_param)
        except ValueError as exc:
            raise AccessError(400, str(exc)) from None
        reader = authorize_stream(identity, user_id, channels, state.settings.public_channels)
        if not state.ensure_listening():
            raise AccessError(503, "notifications are unavailable: the database is unreachable")
        lease = _admit(state, identity.subject)
    except AccessError as exc:
        return refusal(state, exc)
    except SQLAlchemyError:
        return refusal(state, AccessError(503, "tickets are unavailable: the database is unreachable"))
    last_id = request.headers.get("Last-Event-ID")
    if last_id is None:
        last_id = request.args.get("lastEventId")
    client = request.environ.get("gunicorn.socket") or request.environ.get("gunicorn.sock")
    subscriber = Subscriber(reader, channels, state.settings.queue_size, client, _direct_fd(client))
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.limits.release(lease)

    response = _event_stream(StreamSession(state, subscriber, identity, last_id, release).run())
    # The stream releases its slot when it ends; a body that never runs (HEAD) is released
    # when werkzeug closes the response.
    response.call_on_close(release)
    return response


def _direct_fd(client: Any) -> int | None:
    """The socket's descriptor when events may be written to it directly: a plain-text
    HTTP/1.1 GET, whose response gunicorn sends chunked. Never under TLS or HTTP/2."""
    if client is None or request.method != "GET" or request.environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return None
    if hasattr(client, "cipher"):
        return None
    try:
        fd = int(client.fileno())
        # gevent keeps its sockets non-blocking; a blocking one (a sync worker) must not be used.
        return None if os.get_blocking(fd) else fd
    except (OSError, ValueError):
        return None


def _admit(state: State, subject: str) -> int | None:
    """Apply the connection limits; when the database is away, let the stream in unlimited."""
    try:
        return state.limits.admit(subject, request.remote_addr)
    except SQLAlchemyError as exc:
        log.warning("connection limits unavailable (%s): admitting the stream", type(exc).__name__)
        return None


class StreamSession:
    """One open stream: connect, replay what was missed, then live events and heartbeats."""

    __slots__ = ("state", "sub", "expires_at", "last_id", "ends_at", "reason", "on_end")

    def __init__(
        self,
        state: State,
        sub: Subscriber,
        identity: Identity,
        last_id: str | None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.on_end = on_end
        self.reason = "client"  # why the stream ended, for metrics: client, expired, lifetime, ...
        self.sub = sub
        self.expires_at = identity.expires_at
        self.last_id = last_id
        lifetime = state.settings.max_stream_lifetime
        # Jittered, so streams opened together (after a deploy) do not all end together.
        self.ends_at = time.monotonic() + lifetime * random.uniform(0.8, 1.0) if lifetime else None

    def run(self) -> Iterator[bytes]:
        hub = self.state.hub
        hub.subscribe(self.sub)
        self.sub.watch_disconnect()
        metrics.STREAMS_OPENED.inc()
        metrics.OPEN_STREAMS.inc()
        opened = time.monotonic()
        self._log("stream opened")
        try:
            yield encode(retry=jittered(self.state.settings.retry_ms))
            yield from self._connect()
            yield from self._live()
        except GeneratorExit:
            raise
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("stream failed")
            self.reason = "error"
            metrics.REFUSALS.labels("500").inc()
            yield encode(event="error", data=serialize({"error": "internal error", "code": 500}))
        finally:
            hub.unsubscribe(self.sub)
            if self.on_end is not None:
                self.on_end()
            metrics.OPEN_STREAMS.dec()
            metrics.STREAMS_CLOSED.labels(self.sub.closed or self.reason).inc()
            duration = time.monotonic() - opened
            metrics.STREAM_DURATION.observe(duration)
            self._log(
                "stream closed",
                duration=round(duration, 3),
                events=self.sub.sent,
                reason=self.sub.closed or self.reason,
            )

    def _log(self, message: str, **details: Any) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        fields = {"user": self.sub.user_id, "channels": sorted(self.sub.channels), **details}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        log.info("%s %s", message, text, extra={"stream": fields})

    def _connect(self) -> Iterator[bytes]:
        """The reset (if any), the connect message and the replay of what was missed."""
        hub, store, settings = self.state.hub, self.state.store, self.state.settings
        assert hub.cursor is not None
        live_from = hub.cursor  # every event after this arrives through the subscription
        self.sub.cursor = live_from
        replay_after: int | None = None
        head: list[bytes] = []
        if self.last_id is not None:
            requested = parse_last_event_id(self.last_id)
            if requested is not None and requested > live_from:
                # Another worker may be ahead of ours: trust the id if the table knows it.
                with self.state.replay_gate:
                    newest = store.newest_id()
                if requested > newest:
                    requested = None
                else:
                    self.sub.cursor = requested
            if requested is None:
                head.append(_reset("unknown-id", live_from))
            elif requested < live_from:
                replay_after = requested
        frames = None
        if replay_after is not None:
            with self.state.replay_gate:
                # Pruning may run in any process: ask the table, even when memory holds the rest.
                with store.engine.connect() as conn:
                    pruned = store.pruned_through(conn)
                if replay_after < pruned:
                    head.append(_reset("history-expired", pruned))
                    replay_after = pruned
                frames = hub.replay_from_memory(replay_after, self.sub)
                if frames is None:
                    frames = [
                        (e.id, encode(id=e.id, event=e.name, data=e.data))
                        for e in store.replay(replay_after, live_from, self.sub.user_id, tuple(self.sub.channels))
                    ]
        if settings.connect_message:
            at = self.sub.cursor if replay_after is None else replay_after
            head.append(encode(id=at, event="notification", data=serialize(CONNECT_MESSAGE)))
        if frames:
            metrics.EVENTS_REPLAYED.inc(len(frames))
            self.sub.sent += len(frames)
            head.extend(frame for _, frame in frames)
            self.sub.cursor = max(self.sub.cursor, frames[-1][0])
        if replay_after is not None:
            self.sub.cursor = max(self.sub.cursor, live_from)
        if head:
            yield b"".join(head)

    def _live(self) -> Iterator[bytes]:
        """Live events, heartbeats, expiry and the end. With ``sub.fd`` the listener writes most
        events straight to the socket and this loop writes the rest raw (already chunked);
        otherwise everything is yielded to the server."""
        sub, settings = self.sub, self.state.settings
        raw = sub.fd is not None
        sub.live = True
        interval = settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        warn_at = None if self.expires_at is None else self.expires_at - settings.expiry_warning
        while True:
            now = time.monotonic()
            deadline = next_beat if self.ends_at is None else min(next_beat, self.ends_at)
            out: list[bytes] = []
            final: bytes | None = None
            if self.expires_at is not None:
                wall = time.time()
                if wall >= self.expires_at:
                    self.reason = "expired"
                    metrics.REFUSALS.labels("401").inc()
                    final = encode(event="error", data=serialize({"error": "token expired", "code": 401}))
                elif warn_at is not None and wall >= warn_at:
                    out.append(_expiring(self.expires_at, wall))
                    warn_at = None
                deadline = min(deadline, now + self.expires_at - wall)
                if warn_at is not None:
                    deadline = min(deadline, now + warn_at - wall)
            if final is None and not out:
                sub.wakeup.wait(max(0.0, deadline - now))
            if final is None and (
                sub.closed == "drain" or (self.ends_at is not None and time.monotonic() >= self.ends_at)
            ):
                self.reason = "lifetime"
                final = encode(retry=jittered(settings.retry_ms))
            elif sub.closed:
                return
            if final is None:
                fresh = [(event_id, frame) for event_id, frame in sub.take() if event_id > sub.cursor]
                out.extend(frame for _, frame in fresh)
                if fresh:
                    sub.cursor = fresh[-1][0]
                    sub.sent += len(fresh)
                if time.monotonic() >= next_beat:
                    out.append(encode(id=sub.cursor, event="heartbeat", data="{}"))
                    next_beat = time.monotonic() + interval
            else:
                out.append(final)
            if raw:
                prefix, sub.partial = sub.partial, b""
                data = prefix + (chunked(b"".join(out)) if out else b"")
                if data and not self._write_raw(data):
                    return
            elif out:
                sub.writer = gevent.getcurrent()
                yield b"".join(out)
                sub.writer = None
            if final is not None:
                if self.reason == "lifetime":
                    self._end_keepalive()
                return

    def _write_raw(self, data: bytes) -> bool:
        """Write ``data`` (already chunked) to the socket, cooperatively; False if the client is gone."""
        sub = self.sub
        sub.writer = gevent.getcurrent()
        try:
            sub.client.sendall(data)
            return True
        except OSError:
            self.reason = "gone"
            return False
        finally:
            sub.writer = None

    def _end_keepalive(self) -> None:
        """After the last chunk, stop reading the connection so the server closes it at once
        instead of holding it open for another request while the worker shuts down."""
        if self.sub.client is not None:
            try:
                self.sub.client.shutdown(socket.SHUT_RD)
            except OSError:
                pass


def _expiring(expires_at: float, now: float) -> bytes:
    data = {
        "type": "token-expiring",
        "expiresAt": int(expires_at),
        "expiresIn": max(0, int(expires_at - now)),
    }
    return encode(event="token-expiring", data=serialize(data))


def _reset(reason: str, at: int) -> bytes:
    return encode(id=at, event="reset", data=serialize({"type": "reset", "reason": reason}))


@blueprint.post("/ticket")
def ticket() -> tuple[Response, int]:
    """Trade the real token (header or cookie) for a short-lived, single-use stream ticket."""
    state = get_state()
    try:
        identity = authenticate(locations=("headers", "cookies"))
    except AccessError as exc:
        return jsonify(exc.as_data()), exc.code
    ttl = state.settings.ticket_ttl
    if identity.expires_at is not None:
        ttl = max(0.0, min(ttl, identity.expires_at - time.time()))
    try:
        value = issue(state.store.engine, state.names, identity, ttl)
    except SQLAlchemyError:
        return jsonify({"error": "tickets are unavailable: the database is unreachable", "code": 503}), 503
    return jsonify({"ticket": value, "expiresIn": int(ttl)}), 201


@blueprint.post("/publish")
def publish_http() -> tuple[Response, int]:
    state = get_state()
    try:
        identity = authenticate(locations=("headers",))
    except AccessError as exc:
        return jsonify(exc.as_data()), exc.code
    if not request.is_json:
        return jsonify({"error": "send the body as Content-Type: application/json", "code": 415}), 415
    cap = state.settings.max_body_bytes
    if request.content_length is not None and request.content_length > cap:
        return jsonify({"error": f"the body is larger than {cap} bytes", "code": 413}), 413
    raw = request.stream.read(cap + 1)
    if len(raw) > cap:
        return jsonify({"error": f"the body is larger than {cap} bytes", "code": 413}), 413
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):
        return jsonify({"error": "the body must be JSON: an event object or an array of them", "code": 400}), 400
    items = body if isinstance(body, list) else [body]
    if not items:
        return jsonify({"error": "the array of events is empty", "code": 422}), 422
    events = []
    try:
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "event" not in item or "data" not in item:
                raise ValueError(f"item {index}: expected an object with 'event' and 'data'")
            unknown = set(item) - {"event", "data", "userId", "channel"}
            if unknown:
                raise ValueError(f"item {index}: unknown keys {sorted(unknown)}")
            try:
                event = build_event(item["event"], item["data"], item.get("userId"), item.get("channel"))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
            authorize_publish(identity, event.user_id, event.channel)
            events.append(event)
    except AccessError as exc:
        return jsonify(exc.as_data()), exc.code
    except ValueError as exc:
        code = 413 if "-byte limit" in str(exc) else 422
        return jsonify({"error": str(exc), "code": code}), code
    try:
        ids = state.append(events)
    except PublishError as exc:
        current_app.logger.error("publish failed: %s", exc)
        return jsonify({"error": "the event could not be stored", "code": 503}), 503
    if isinstance(body, list):
        return jsonify({"ids": ids}), 201
    return jsonify({"id": ids[0]}), 201
