"""Operations endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz``
(database reachable, this worker's listener connected, not shutting down)."""

from __future__ import annotations

import gevent
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from . import metrics
from .state import get_state

ops = Blueprint("notifications_ops", __name__)

READY_TIMEOUT = 2.0


@ops.get("/metrics")
def metrics_view() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@ops.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = get_state()
    database = False
    try:
        with gevent.Timeout(READY_TIMEOUT):
            with state.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        database = True
    except (Exception, gevent.Timeout):
        database = False
    state.ensure_listening(timeout=0)
    listener = state.listener.connected.is_set()
    draining = state.hub.draining
    ready = database and listener and not draining
    body = {
        "status": "ready" if ready else "unavailable",
        "database": database,
        "listener": listener,
        "draining": draining,
        "openStreams": state.hub.open_streams,
    }
    return jsonify(body), 200 if ready else 503
