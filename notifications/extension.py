"""The Flask extension: ``Notifications(app)`` or ``Notifications().init_app(app)``.

State lives in ``app.extensions["notifications"]``. Engines are created lazily, on first use,
so a gunicorn worker creates them after the fork (and after psycogreen is installed).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.lock
from flask import Flask, current_app
from flask_jwt_extended import JWTManager
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from . import config as config_module
from . import cors, metrics
from .auth import Identity, VerifiedTokens, authenticate, cacheable_tokens
from .config import Settings
from .events import Event
from .exceptions import NotificationsError, PublishError
from .fanout import Hub, Listener
from .limits import Limits
from .schema import Names
from .sse import encode, jittered
from .store import EventStore

log = logging.getLogger("notifications")

IdentityHook = Callable[[], "Identity | str | None"]

EXTENSION_KEY = "notifications"
URL_PREFIX = "/api/notifications"
LISTENER_START_TIMEOUT = 10.0


class State:
    """Everything one app's notifications need at run time."""

    def __init__(
        self, app: Flask, settings: Settings, database_url: str, identity_hook: IdentityHook | None = None
    ) -> None:
        self.app = app
        self.identity_hook = identity_hook
        self.settings = settings
        self.database_url = database_url
        self.names = Names(settings.table, settings.schema)
        self.hub = Hub()
        self.hub.farewell = lambda: encode(retry=jittered(settings.retry_ms))
        self._verified_tokens: VerifiedTokens | None = None
        self.server_log: Any = None  # gunicorn's logger, for the access lines of detached streams
        self.replay_gate = gevent.lock.BoundedSemaphore(settings.replay_concurrency)
        self._store: EventStore | None = None
        self._listener: Listener | None = None
        self._limits: Limits | None = None
        self._maintenance: gevent.Greenlet | None = None

    @property
    def store(self) -> EventStore:
        if self._store is None:
            self._store = EventStore(
                self._make_engine(self.database_url),
                self.names,
                autocommit=self._make_engine(self.database_url, isolation_level="AUTOCOMMIT"),
            )
        return self._store

    def _make_engine(self, url: str, **options: Any) -> Engine:
        options.setdefault("pool_size", self.settings.pool_size)
        options.setdefault("max_overflow", self.settings.pool_size)
        engine = create_engine(url, **options)
        ping_when_idle(engine)
        return engine

    @property
    def verified_tokens(self) -> VerifiedTokens:
        """Decided on first use, once the app has registered its flask-jwt-extended loaders."""
        if self._verified_tokens is None:
            size = self.settings.token_cache if cacheable_tokens(self.app) else 0
            self._verified_tokens = VerifiedTokens(size)
        return self._verified_tokens

    @property
    def limits(self) -> Limits:
        if self._limits is None:
            s = self.settings
            self._limits = Limits(
                self.store.engine,
                self.names,
                s.max_streams_per_user,
                s.connect_rate_per_user,
                s.connect_rate_per_address,
                s.rate_limit_exempt,
                s.stream_lease,
            )
        return self._limits

    @property
    def listener(self) -> Listener:
        if self._listener is None:
            url = self.settings.listen_database_url or self.database_url
            probe = self.settings.listener_probe_interval
            engine = create_engine(
                url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": max(1, int(probe * 2)),
                    "keepalives": 1,
                    "keepalives_idle": max(1, int(probe)),
                    "keepalives_interval": max(1, int(probe / 2)),
                    "keepalives_count": 3,
                    "tcp_user_timeout": int(probe * 2000),
                    "application_name": "notifications-listener",
                },
            )
            limits = self.limits
            self._listener = Listener(
                self.hub, self.store, engine, probe, on_tick=lambda conn: self._tick(conn, limits)
            )
        return self._listener

    @staticmethod
    def _tick(conn: Connection, limits: Limits) -> None:
        limits.beat(conn, limits.lease_seconds / 3)
        metrics.sample_memory(every=1.0)

    def identify(self) -> Identity:
        """Who is asking: the host app's hook first (say, its login session), else the JWT."""
        if self.identity_hook is not None:
            found = self.identity_hook()
            if isinstance(found, Identity):
                return found
            if found is not None:
                return Identity(subject=str(found), expires_at=None)
        return authenticate(cache=self.verified_tokens)

    def start(self) -> None:
        """Start this process's listener and its pruner, if not yet started (gunicorn does it
        as the worker starts; any other server on the first stream)."""
        self.listener.start()
        if self._maintenance is None:
            self._maintenance = gevent.spawn(self._maintain)

    def ensure_listening(self, timeout: float = LISTENER_START_TIMEOUT) -> bool:
        """Start this process's listener if needed; True once the hub has a cursor."""
        self.start()
        return bool(self.listener.started.wait(timeout))

    def _maintain(self) -> None:
        """Prune old events and stale limit rows, in one process at a time across all machines."""
        interval = self.settings.prune_interval
        while interval > 0:
            gevent.sleep(interval * random.uniform(0.5, 1.5))
            try:
                self.prune_once()
            except Exception as exc:  # the database may be away; try again next time
                log.warning("pruning failed: %s", type(exc).__name__)

    def prune_once(self, older_than: float | None = None, wait: bool = False) -> int | None:
        """Prune events older than ``older_than`` (default ``NOTIFICATIONS_RETENTION``) and
        beyond ``NOTIFICATIONS_RETENTION_MAX_EVENTS``, and stale limit rows, in one process at a
        time across every machine; return how many events, or None when another process is
        pruning right now (``wait``: wait for it, then prune)."""
        s = self.settings
        with self.store.engine.connect() as conn:
            key = {"k": self.store.lock_key + 1}
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), key)
            elif not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar():
                conn.rollback()
                return None
            conn.commit()
            try:
                deleted = self.store.prune(s.retention if older_than is None else older_than, s.retention_max_events)
                with conn.begin():
                    self.limits.clean_up(conn)
                return deleted
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
                conn.commit()

    def append(self, events: Sequence[Event]) -> list[str]:
        try:
            ids = self.store.append(events)
        except SQLAlchemyError as exc:
            raise PublishError(f"could not store the event: {type(exc).__name__}") from exc
        metrics.EVENTS_PUBLISHED.inc(len(ids))
        return ids

    def shutdown(self) -> None:
        """End every stream promptly and stop the listener (deploy, reload, exit)."""
        self.hub.drain()
        if self._listener is not None:
            self._listener.stop()
        if self._maintenance is not None:
            self._maintenance.kill(block=False)
        if self._limits is not None:
            self._limits.close_worker()


class Notifications:
    """Real-time notifications over Server-Sent Events, stored in PostgreSQL.

    ``identity`` is an optional hook called in the stream's request context: return the user id
    (or an ``Identity`` with grants) of a request the host app has already authenticated, for
    example Flask-Login's ``current_user.get_id()``, or None to fall back to the JWT.
    """

    def __init__(self, app: Flask | None = None, *, identity: IdentityHook | None = None) -> None:
        self.identity_hook = identity
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("Notifications is already registered on this app.")
        settings = config_module.read(app.config)
        url = app.config.get("DATABASE_URL")
        if not url:
            raise config_module.ConfigError(
                "DATABASE_URL is not set: point it at PostgreSQL (app.py's create_app() starts an "
                "embedded one when it is missing)"
            )
        url = config_module.normalize_database_url(str(url))
        app.config["DATABASE_URL"] = url
        _configure_jwt(app)
        state = State(app, settings, url, self.identity_hook)
        app.extensions[EXTENSION_KEY] = state

        from . import fastpath
        from .cli import cli
        from .views import blueprint

        app.register_blueprint(blueprint, url_prefix=URL_PREFIX)
        fastpath.install(app, state, URL_PREFIX + "/stream")
        cors.install(app, settings.cors_origins, URL_PREFIX)
        app.cli.add_command(cli)
        if settings.auto_migrate:
            from .migrate import upgrade

            upgrade(state.store.engine, state.names)


def _configure_jwt(app: Flask) -> None:
    if app.config.get("JWT_PUBLIC_KEY") and not app.config.get("JWT_ALGORITHM"):
        raise config_module.ConfigError("JWT_PUBLIC_KEY is set: set JWT_ALGORITHM too (RS256, ES256, ...)")
    app.config.setdefault("JWT_TOKEN_LOCATION", ["headers", "query_string", "cookies"])
    app.config.setdefault("JWT_QUERY_STRING_NAME", "token")
    app.config.setdefault("JWT_VERIFY_SUB", False)  # ``sub`` may be a number; compared as a string
    if "flask-jwt-extended" not in app.extensions:
        JWTManager(app)


IDLE_PING_AFTER = 1.0


def ping_when_idle(engine: Engine, after: float = IDLE_PING_AFTER) -> None:
    """Check a pooled connection before use if it sat idle for ``after`` seconds (a restarted
    database leaves dead connections in the pool), and hand out another if it is dead: like
    ``pool_pre_ping``, without a round trip per publish when connections are busy."""

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the pooled connection is dead") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def get_state(app: Flask | None = None) -> State:
    """The notifications state of ``app`` (default: the current app)."""
    try:
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        raise RuntimeError(
            "notifications needs an application context: call it inside a request or `with app.app_context():`"
        ) from None
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise NotificationsError("Notifications is not set up on this app. Did you forget to call init_app?")
    return state  # type: ignore[no-any-return]
