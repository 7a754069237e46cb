"""gunicorn settings for the notifications service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment overrides: ``PORT`` (8000), ``WEB_CONCURRENCY`` (2 workers),
``WORKER_CONNECTIONS`` (10000 requests in progress per worker; a live plain-HTTP stream
leaves gunicorn's pool, see notifications/stream.py). ``--bind`` and ``-w`` on the command line
still win. Never use ``--preload``: engines and the listener must be created after the fork.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gevent

# -- Server socket ---------------------------------------------------------------------------
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
backlog = 2048
limit_request_line = 8190  # room for 50 channels of 128 characters and a token in the URL

# -- Workers: gevent, many connections each --------------------------------------------------
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
keepalive = 5
timeout = 30
graceful_timeout = 20
control_socket_disable = True  # several instances may run side by side (tests, machines)

# -- Logging ---------------------------------------------------------------------------------
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
logger_class = "notifications.logs.RedactingGunicornLogger"  # no token ever reaches a log line

_embedded: Any = None
_metrics_dir: Any = None


def on_starting(server: Any) -> None:
    """Start the embedded PostgreSQL (no DATABASE_URL) once, in the master, for every worker."""
    global _embedded, _metrics_dir
    instance = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # mkdtemp, not TemporaryDirectory: its finaliser would run in every forked worker too.
        _metrics_dir = tempfile.mkdtemp(prefix="notifications-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    if not os.environ.get("DATABASE_URL"):
        from notifications.embedded import EmbeddedPostgres

        _embedded = EmbeddedPostgres(os.path.join(instance, "pgdata"))
        os.environ["DATABASE_URL"] = _embedded.start()
        server.log.info("embedded PostgreSQL at %s (data in %s)", os.environ["DATABASE_URL"], _embedded.data_dir)


def post_fork(server: Any, worker: Any) -> None:
    """Make psycopg2 cooperative with gevent before any connection exists in this worker."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def post_worker_init(worker: Any) -> None:
    """Start this worker's listener and pruner, and end every stream promptly once the worker
    stops."""
    from notifications.logs import attach_to_gunicorn
    from notifications.state import EXTENSION_KEY

    attach_to_gunicorn(worker.log.error_log)
    state = worker.wsgi.extensions.get(EXTENSION_KEY) if hasattr(worker.wsgi, "extensions") else None
    if state is None:
        return
    state.server_log = worker.log  # detached streams write their own access lines
    state.start()
    if worker.age == 1 and state.app.config.get("NOTIFICATIONS_GENERATED_KEY"):
        _announce_demo_token(worker, state.app)

    def watch() -> None:
        # TERM, HUP (reload) and max_requests all clear ``worker.alive``.
        while worker.alive:
            gevent.sleep(0.2)
        logging.getLogger("notifications").info(
            "worker %s stopping: ending %d streams", worker.pid, state.hub.open_streams
        )
        state.shutdown()

    gevent.spawn(watch)


def _announce_demo_token(worker: Any, app: Any) -> None:
    """Development mode, first worker only: say so, and print a token for the demo user."""
    from notifications.cli import mint_token

    with app.app_context():
        token = mint_token("demo", ttl=86400)
    host, port = worker.sockets[0].getsockname()[:2]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    worker.log.info(
        "development mode: JWT key kept in %s/dev-jwt-secret; set JWT_SECRET_KEY in production",
        app.instance_path,
    )
    worker.log.info("demo page: http://%s:%s/", host, port)
    worker.log.error_log.info(
        "try: curl -N 'http://%s:%s/api/notifications/stream?token=%s'", host, port, token, extra={"unredacted": True}
    )


def worker_exit(server: Any, worker: Any) -> None:
    """The worker's loop has ended: end the streams it still holds (detached streams have no
    greenlet the worker would wait for), each with its last ``retry:``."""
    from notifications.state import EXTENSION_KEY

    state = worker.wsgi.extensions.get(EXTENSION_KEY) if hasattr(worker.wsgi, "extensions") else None
    if state is not None:
        state.shutdown()


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: its open-stream gauge stops counting."""
    from notifications.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    """Stop the embedded PostgreSQL this master started."""
    if _embedded is not None and _embedded.started_here:
        _embedded.stop()
    if _metrics_dir is not None:
        import shutil

        shutil.rmtree(_metrics_dir, ignore_errors=True)
