"""One app's notifications at run time: ``State``, kept in ``app.extensions["notifications"]``
(``get_state``). Engines, the listener and the limits are created on first use, so a gunicorn
worker creates them after the fork (and after psycogreen is installed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.lock
from flask import Flask, current_app
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from . import metrics
from .auth import Identity, VerifiedTokens, authenticate, cacheable_tokens
from .config import Settings
from .control import Revocations, control_channel, handle
from .exceptions import SetupError
from .fanout import Hub, Listener
from .inbox_store import InboxStore
from .limits import Limits
from .pruning import Pruner
from .schema import Names
from .sequencer import Sequencer
from .sse import encode, jittered
from .store import EventStore, StoredEvent, make_engine

IdentityHook = Callable[[], "Identity | str | None"]

EXTENSION_KEY = "notifications"
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
        self._inbox: InboxStore | None = None
        self._listener: Listener | None = None
        self._limits: Limits | None = None
        self._pruner: Pruner | None = None
        self._pruning: gevent.Greenlet | None = None
        self._revocations: Revocations | None = None
        self._sequencer: Sequencer | None = None

    @property
    def store(self) -> EventStore:
        if self._store is None:
            size = self.settings.pool_size
            self._store = EventStore(
                make_engine(self.database_url, size),
                self.names,
                autocommit=make_engine(self.database_url, size, isolation_level="AUTOCOMMIT"),
            )
        return self._store

    @property
    def inbox(self) -> InboxStore:
        """The inbox tables, on the store's engine (``notifications.inbox``)."""
        if self._inbox is None:
            self._inbox = InboxStore(self.store.engine, self.names, reads=self.store.autocommit)
        return self._inbox

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
                track_streams=s.presence == "on",
            )
        return self._limits

    @property
    def presence(self) -> bool:
        """Whether presence is kept (see ``presence``)."""
        return self.settings.presence != "off" and self.limits.tracks_streams

    @property
    def revocations(self) -> Revocations:
        if self._revocations is None:
            self._revocations = Revocations(
                self.store.engine,
                self.names,
                current=lambda: self._listener is not None and self._listener.connected.is_set(),
            )
        return self._revocations

    @property
    def pruner(self) -> Pruner:
        if self._pruner is None:
            self._pruner = Pruner(self.store, self.limits, self.settings, self.inbox)
        return self._pruner

    def _dedicated_engine(self, application_name: str) -> Any:
        """An engine for one long-lived connection of its own (never a pool's), on the direct
        URL (LISTEN and session locks are session state), with keepalives and a user timeout."""
        url = self.settings.listen_database_url or self.database_url
        probe = self.settings.listener_probe_interval
        return create_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": max(1, int(probe * 2)),
                "keepalives": 1,
                "keepalives_idle": max(1, int(probe)),
                "keepalives_interval": max(1, int(probe / 2)),
                "keepalives_count": 3,
                "tcp_user_timeout": int(probe * 2000),
                "application_name": application_name,
            },
        )

    @property
    def listener(self) -> Listener:
        if self._listener is None:
            limits, revocations, hub = self.limits, self.revocations, self.hub
            self._listener = Listener(
                hub,
                self.store,
                self._dedicated_engine("notifications-listener"),
                self.settings.listener_probe_interval,
                on_tick=lambda conn: self._tick(conn, limits),
                control=(control_channel(self.names), revocations.load, lambda note: handle(note, hub, revocations)),
            )
        return self._listener

    @property
    def sequencer(self) -> Sequencer:
        if self._sequencer is None:
            self._sequencer = Sequencer(
                self.store, self._dedicated_engine("notifications-sequencer"), on_moved=self._moved_here
            )
        return self._sequencer

    def _moved_here(self, after: int, events: list[StoredEvent]) -> None:
        if self._listener is not None:
            self._listener.moved_here(after, events)

    def nudge_sequencer(self) -> None:
        """This process queued events (see ``Sequencer.nudge``)."""
        if self._sequencer is not None:
            self._sequencer.nudge()

    @staticmethod
    def _tick(conn: Connection, limits: Limits) -> None:
        limits.beat(conn, limits.lease_seconds / 3)
        metrics.sample_memory(every=1.0)

    def identify(self, locations: Sequence[str] = ("query_string", "headers", "cookies")) -> Identity:
        """Who is asking: the host app's hook first (say, its login session), else the JWT
        (looked for in ``locations``)."""
        if self.identity_hook is not None:
            found = self.identity_hook()
            if isinstance(found, Identity):
                return found
            if found is not None:
                return Identity(subject=str(found), expires_at=None)
        return self.authenticate(tuple(locations))

    def authenticate(self, locations: tuple[str, ...] = ("query_string", "headers", "cookies")) -> Identity:
        """The request's JWT, verified (``auth.authenticate``) and not revoked."""
        identity = authenticate(locations, cache=self.verified_tokens)
        self.revocations.check(identity)
        return identity

    def start(self) -> None:
        """Start this process's listener, its candidacy for sequencer and its pruner, if not yet
        started (gunicorn does it as the worker starts; any other server on the first stream)."""
        self.listener.start()
        self.sequencer.start()
        if self._pruning is None:
            self._pruning = gevent.spawn(self.pruner.run)

    def ensure_listening(self, timeout: float = LISTENER_START_TIMEOUT) -> bool:
        """Start this process's listener if needed; True once the hub has a cursor."""
        self.start()
        return bool(self.listener.started.wait(timeout))

    def shutdown(self) -> None:
        """End every stream promptly and stop the listener (deploy, reload, exit)."""
        self.hub.drain()
        if self._listener is not None:
            self._listener.stop()
        if self._sequencer is not None:
            self._sequencer.stop()
        if self._pruning is not None:
            self._pruning.kill(block=False)
        if self._limits is not None:
            self._limits.close_worker()


def get_state(app: Flask | None = None) -> State:
    """The notifications state of ``app`` (default: the current app)."""
    try:
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        raise SetupError(
            "notifications needs an application context: call it inside a request or `with app.app_context():`"
        ) from None
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise SetupError("Notifications is not set up on this app. Did you forget to call init_app?")
    return state  # type: ignore[no-any-return]
