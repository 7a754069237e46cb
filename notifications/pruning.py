"""The one pruner: old events, old inbox notifications and stale limit rows, deleted by one
process at a time across every worker and machine (a session advisory lock,
``locks.prune_key``). Each worker runs the loop (``Pruner.run``, started with the worker);
``flask notifications prune`` runs the same ``prune_once`` and waits for the lock instead of
skipping."""

from __future__ import annotations

import logging
import random

import gevent
from sqlalchemy import text

from .config import Settings
from .inbox_store import InboxStore
from .limits import Limits
from .locks import prune_key
from .store import EventStore

log = logging.getLogger("notifications")


class Pruner:
    """Applies ``NOTIFICATIONS_RETENTION`` and ``..._MAX_EVENTS`` to the stream history and
    ``NOTIFICATIONS_INBOX_RETENTION`` to the inbox (independently) every ``..._PRUNE_INTERVAL``."""

    def __init__(self, store: EventStore, limits: Limits, settings: Settings, inbox: InboxStore | None = None) -> None:
        self.store = store
        self.limits = limits
        self.settings = settings
        self.inbox = inbox or InboxStore(store.engine, store.names)

    def run(self) -> None:
        """Prune now and then, forever (jittered, so workers do not all try at once)."""
        interval = self.settings.prune_interval
        while interval > 0:
            gevent.sleep(interval * random.uniform(0.5, 1.5))
            try:
                self.prune_once()
            except Exception as exc:  # the database may be away; try again next time
                log.warning("pruning failed: %s", type(exc).__name__)

    def prune_once(self, older_than: float | None = None, wait: bool = False) -> int | None:
        """Prune events older than ``older_than`` (default ``NOTIFICATIONS_RETENTION``) and
        beyond ``NOTIFICATIONS_RETENTION_MAX_EVENTS``, inbox notifications older than
        ``NOTIFICATIONS_INBOX_RETENTION``, and stale limit rows; return how many events, or None
        when another process is pruning right now (``wait``: wait for it, then prune)."""
        s = self.settings
        with self.store.engine.connect() as conn:
            key = {"k": prune_key(self.store.names)}
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), key)
            elif not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar():
                conn.rollback()
                return None
            conn.commit()
            try:
                deleted = self.store.prune(s.retention if older_than is None else older_than, s.retention_max_events)
                boxed = self.inbox.prune(s.inbox_retention)
                if boxed:
                    log.info("pruned %d inbox notifications", boxed)
                with conn.begin():
                    self.limits.clean_up(conn)
                return deleted
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
                conn.commit()
