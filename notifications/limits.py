"""Abuse limits that hold across every worker and machine, kept in PostgreSQL.

* At most ``NOTIFICATIONS_MAX_STREAMS_PER_USER`` open streams per user. Each open stream is a
  row owned by its worker; workers renew a lease, so the rows of a crashed worker stop counting
  once its lease lapses and are deleted by the next clean-up.
* At most ``NOTIFICATIONS_CONNECT_RATE_PER_USER`` and ``..._PER_ADDRESS`` connection attempts
  per fixed window (``60/minute``), counted in one upsert per window.

Connects are admitted in batches: every connect that arrives within ``ADMIT_WINDOW`` of the
previous batch joins the next one, and one short transaction settles them all (the streams that
closed meanwhile released first, the rate windows counted in one upsert, the open streams
counted in one query, the new rows inserted in one statement). The transaction holds the
advisory locks of its users' buckets, so two batches on any two workers or machines never both
take a user's last slot: the limits are exact, with no overshoot, at one transaction per batch
instead of one per connect. Outside a gevent worker (a threaded server, a test client) each
connect is a batch of its own.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

import gevent
import gevent.event
import gevent.monkey
from sqlalchemy import Connection, Engine, text

from . import locks
from .auth import AccessError
from .exceptions import InvalidInput, NotificationsError
from .schema import Names

DEFAULT_LEASE_SECONDS = 30.0
ADMIT_WINDOW = 0.01  # seconds between two admission batches of one worker
_BEAT = (
    "INSERT INTO {workers} (worker, seen_at) VALUES (%(worker)s, now()) "
    "ON CONFLICT (worker) DO UPDATE SET seen_at = now()"
)
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(second|minute|hour|day)s?\s*")


class LimitsUnavailable(NotificationsError):
    """The limits could not be checked (the database is unreachable)."""


@dataclass(frozen=True)
class Rate:
    """``count`` attempts per ``period`` seconds."""

    count: int
    period: int


def parse_networks(value: object) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated addresses or networks (``127.0.0.0/8,::1``)."""
    parts = [p.strip() for p in str(value or "").split(",") if p.strip()]
    try:
        return tuple(ip_network(p, strict=False) for p in parts)
    except ValueError as exc:
        raise InvalidInput(f"invalid network list {value!r}: {exc}") from None


def parse_rate(value: object) -> Rate | None:
    """``"60/minute"`` (also second, hour, day); ``0``, ``none`` or empty turn the limit off."""
    raw = str(value if value is not None else "").strip().lower()
    if raw in ("", "0", "none", "off"):
        return None
    match = _RATE.fullmatch(raw)
    if not match:
        raise InvalidInput(f"invalid rate {value!r}: use N/second, N/minute, N/hour or N/day")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)])


@dataclass
class _Attempt:
    """One connect waiting for its batch: the rate-window keys it counts toward."""

    user_id: str
    keys: list[tuple[str, Rate]]
    channels: str = ""  # comma-separated, for presence
    outcome: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)


def _threaded() -> bool:
    """Whether this process serves requests in threads (no gevent loop to batch on): then each
    connect is a batch of its own, settled in the request's thread."""
    return not gevent.monkey.is_module_patched("socket")


class Limits:
    """Admission control for streams (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        names: Names,
        max_streams_per_user: int,
        rate_per_user: Rate | None,
        rate_per_address: Rate | None,
        exempt_networks: Sequence[IPv4Network | IPv6Network] = (),
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        track_streams: bool = False,
    ) -> None:
        self.lease_seconds = lease_seconds
        # A row per open stream: for the cap, and for presence (which can ask for them alone).
        self.tracks_streams = bool(max_streams_per_user) or track_streams
        self.engine = engine
        self.names = names
        self.max_streams = max_streams_per_user
        self.rate_per_user = rate_per_user
        self.rate_per_address = rate_per_address
        self.exempt_networks = tuple(exempt_networks)
        self.worker = f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._attempts: list[_Attempt] = []
        self._released: list[int] = []
        self._batching = False
        self._last_batch = 0.0
        self._last_beat = 0.0
        self._counted_addresses: dict[str, bool] = {}
        self._conn: Any = None
        self._lock = threading.Lock()  # the connection: one batch at a time (threaded servers)

    @property
    def enabled(self) -> bool:
        return bool(self.tracks_streams or self.rate_per_user or self.rate_per_address)

    def admit(self, user_id: str, address: str | None, channels: Sequence[str] = ()) -> int | None:
        """Count this connection (of ``user_id``, reading ``channels``); return its lease id, or
        raise ``AccessError`` 429 (or ``LimitsUnavailable``). Waits for the next batch (at most
        ``ADMIT_WINDOW`` plus one transaction)."""
        if not self.enabled:
            return None
        keys = []
        if self.rate_per_user is not None:
            keys.append((f"user:{user_id}", self.rate_per_user))
        if self.rate_per_address is not None and self.counts_address(address):
            keys.append((f"addr:{address}", self.rate_per_address))
        attempt = _Attempt(user_id, keys, ",".join(channels))
        if _threaded():
            self._settle([attempt], self._take_released())
        else:
            self._attempts.append(attempt)
            self._start_batching()
        return attempt.outcome.get()  # type: ignore[no-any-return]

    def release(self, lease: int | None) -> None:
        """Forget a closed stream (in the next batch)."""
        if lease is None:
            return
        self._released.append(lease)
        if _threaded():
            self._settle([], self._take_released())
        else:
            self._start_batching()

    def _take_released(self) -> list[int]:
        released, self._released = self._released, []
        return released

    def _start_batching(self) -> None:
        if not self._batching:
            self._batching = True
            gevent.spawn(self._run_batches)

    def _run_batches(self) -> None:
        try:
            while self._attempts or self._released:
                due = self._last_batch + ADMIT_WINDOW - time.monotonic()
                if due > 0:
                    gevent.sleep(due)
                attempts, self._attempts = self._attempts, []
                released = self._take_released()
                self._last_batch = time.monotonic()
                if not self._settle(attempts, released):
                    gevent.sleep(2.0)  # the database is away: try the releases again later
        finally:
            self._batching = False

    def _settle(self, attempts: list[_Attempt], released: list[int]) -> bool:
        """Run one batch and hand each attempt its outcome; False when the database failed.
        A batch that fails is tried once more on a new connection (the old one may have died
        with a database restart)."""
        try:
            try:
                outcomes = self._apply(attempts, released)
            except Exception:
                outcomes = self._apply(attempts, released)
        except Exception as exc:
            self._released.extend(released)
            failure = LimitsUnavailable(f"connection limits unavailable ({type(exc).__name__})")
            for attempt in attempts:
                attempt.outcome.set_exception(failure)
            return False
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            if isinstance(outcome, AccessError):
                attempt.outcome.set_exception(outcome)
            else:
                attempt.outcome.set(outcome)
        return True

    def _apply(self, attempts: list[_Attempt], released: list[int]) -> list[int | AccessError | None]:
        """One transaction in two round trips: release ``released``, lock the users' buckets,
        count the rate windows and the open streams (first), then insert the admitted streams
        and commit (second). Each statement of the first sees what committed before the locks
        were granted."""
        outcomes: list[int | AccessError | None] = [None] * len(attempts)
        n = self.names
        capped = bool(attempts and self.max_streams)
        tracked = bool(attempts and self.tracks_streams)
        head = ["BEGIN"]
        params: dict[str, Any] = {"released": released, "ns": locks.LIMITS_NAMESPACE, "worker": self.worker}
        if released:
            head.append(f"DELETE FROM {n.sql('_streams')} WHERE id = ANY(%(released)s)")
        if capped:
            params["buckets"] = sorted({locks.user_bucket(a.user_id) for a in attempts})
            head.append("SELECT pg_advisory_xact_lock(%(ns)s, b) FROM unnest(%(buckets)s::int[]) AS b")
        if tracked and time.monotonic() - self._last_beat >= self.lease_seconds / 3:
            head.append(_BEAT.format(workers=n.sql("_workers")))  # this worker's streams count
        now = time.time()
        windows = {key: int(now // rate.period) * rate.period for a in attempts for key, rate in a.keys}
        added = Counter(key for a in attempts for key, _ in a.keys)
        parts = []
        if windows:
            keys = sorted(windows)  # rows locked in one order: concurrent batches cannot deadlock
            params.update(keys=keys, windows=[windows[k] for k in keys], counts=[added[k] for k in keys])
            parts.append("SELECT 'rate', key, count::bigint FROM counted")
        if tracked:
            params.update(attempts=len(attempts), streams=n.sql("_streams"))
            parts.append(
                "SELECT 'id', NULL, nextval(pg_get_serial_sequence(%(streams)s, 'id')) "
                "FROM generate_series(1, %(attempts)s)"
            )
        if capped:
            params.update(users=sorted({a.user_id for a in attempts}), lease=self.lease_seconds)
            parts.append(
                f"SELECT 'open', s.user_id, count(*) FROM {n.sql('_streams')} s "
                f"JOIN {n.sql('_workers')} w ON w.worker = s.worker "
                "WHERE s.user_id = ANY(%(users)s) AND w.seen_at > now() - make_interval(secs => %(lease)s) "
                "GROUP BY s.user_id"
            )
        with self._lock:
            conn = self._connection()
            try:
                cur = conn.cursor()
                if parts:
                    counted = (
                        f'WITH counted AS (INSERT INTO {n.sql("_rates")} AS r (key, "window", count) '
                        "SELECT * FROM unnest(%(keys)s::text[], %(windows)s::bigint[], %(counts)s::int[]) "
                        'ON CONFLICT (key, "window") DO UPDATE SET count = r.count + excluded.count '
                        "RETURNING key, count) "
                        if windows
                        else ""
                    )
                    head.append(counted + " UNION ALL ".join(parts))
                else:
                    head.append("COMMIT")  # nothing to decide
                cur.execute(";\n".join(head), params)
                if parts:
                    self._decide(attempts, outcomes, cur.fetchall(), windows, added, now)
                    admitted = [(o, a) for a, o in zip(attempts, outcomes, strict=True) if isinstance(o, int)]
                    if admitted:
                        cur.execute(
                            f"INSERT INTO {n.sql('_streams')} (id, user_id, worker, channels) "
                            "SELECT i, u, %(worker)s, string_to_array(c, ',') "
                            "FROM unnest(%(ids)s::bigint[], %(users)s::text[], %(channels)s::text[]) AS t(i, u, c);\n"
                            "COMMIT",
                            {
                                "worker": self.worker,
                                "ids": [i for i, _ in admitted],
                                "users": [a.user_id for _, a in admitted],
                                "channels": [a.channels for _, a in admitted],
                            },
                        )
                    else:
                        cur.execute("COMMIT")
                if tracked:
                    self._last_beat = time.monotonic()
            except BaseException:
                self._conn = None
                conn.close()  # in whatever state it is: the transaction ends with it
                raise
        return outcomes

    def _decide(
        self,
        attempts: list[_Attempt],
        outcomes: list[int | AccessError | None],
        rows: list[tuple[str, str | None, int]],
        windows: dict[str, int],
        added: Counter[str],
        now: float,
    ) -> None:
        """Refuse the attempts over a rate or their user's cap, in arrival order; give the rest
        a lease id."""
        seen = {key: count - added[key] for kind, key, count in rows if kind == "rate" and key is not None}
        open_streams: Counter[str] = Counter({key: count for kind, key, count in rows if kind == "open" and key})
        ids = [count for kind, _, count in rows if kind == "id"]
        for i, attempt in enumerate(attempts):
            for key, rate in attempt.keys:
                seen[key] += 1  # counted before this one
                if seen[key] > rate.count and outcomes[i] is None:
                    retry_after = max(1, math.ceil(windows[key] + rate.period - now))
                    outcomes[i] = AccessError(
                        429, "too many connection attempts; try again later", retryAfter=retry_after
                    )
            if outcomes[i] is not None or not self.tracks_streams:
                continue
            if self.max_streams and open_streams[attempt.user_id] >= self.max_streams:
                outcomes[i] = AccessError(
                    429, f"too many open streams for this user (at most {self.max_streams})", retryAfter=5
                )
                continue
            open_streams[attempt.user_id] += 1
            outcomes[i] = ids.pop()

    def _connection(self) -> Any:
        """The batches' own DBAPI connection, in autocommit (they say BEGIN and COMMIT themselves)."""
        if self._conn is None:
            raw = self.engine.raw_connection()
            raw.detach()  # never back to the pool in autocommit
            raw.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            self._conn = raw
        return self._conn

    def counts_address(self, address: str | None) -> bool:
        """Whether connections from ``address`` count toward the per-address rate: not when it
        is unknown or in an exempt network (a local proxy makes every client look like it)."""
        if not address:
            return False
        known = self._counted_addresses.get(address)
        if known is None:
            try:
                ip = ip_address(address)
            except ValueError:
                known = True
            else:
                known = not any(ip in network for network in self.exempt_networks)
            if len(self._counted_addresses) >= 10000:
                self._counted_addresses.clear()
            self._counted_addresses[address] = known
        return known

    def beat(self, conn: Connection, every: float = 0.0) -> None:
        """Renew this worker's lease (at most once per ``every`` seconds)."""
        now = time.monotonic()
        if not self.tracks_streams or every and now - self._last_beat < every:
            return
        conn.exec_driver_sql(_BEAT.format(workers=self.names.sql("_workers")), {"worker": self.worker})
        self._last_beat = now

    def open_streams(self) -> int | None:
        """Open streams across every live worker and machine (known only when they are tracked:
        the cap or presence is on)."""
        if not self.tracks_streams:
            return None
        n = self.names
        with self.engine.connect() as conn:
            count: int = conn.execute(
                text(
                    f"SELECT count(*) FROM {n.sql('_streams')} s JOIN {n.sql('_workers')} w ON w.worker = s.worker "
                    "WHERE w.seen_at > now() - make_interval(secs => :lease)"
                ),
                {"lease": self.lease_seconds},
            ).scalar_one()
        return count

    def close_worker(self) -> None:
        """This worker is exiting: its streams no longer count."""
        if not self.tracks_streams:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {self.names.sql('_streams')} WHERE worker = :w"), {"w": self.worker})
                conn.execute(text(f"DELETE FROM {self.names.sql('_workers')} WHERE worker = :w"), {"w": self.worker})
        except Exception:
            pass  # the lease lapses by itself

    def clean_up(self, conn: Connection) -> None:
        """Delete the streams of workers whose lease lapsed, and rate windows long past."""
        n = self.names
        conn.execute(
            text(
                f"DELETE FROM {n.sql('_streams')} s WHERE NOT EXISTS (SELECT 1 FROM {n.sql('_workers')} w "
                "WHERE w.worker = s.worker AND w.seen_at > now() - make_interval(secs => :lease))"
            ),
            {"lease": self.lease_seconds * 4},
        )
        conn.execute(
            text(f"DELETE FROM {n.sql('_workers')} WHERE seen_at < now() - make_interval(secs => :lease)"),
            {"lease": self.lease_seconds * 4},
        )
        conn.execute(
            text(f'DELETE FROM {n.sql("_rates")} WHERE "window" < :oldest'),
            {"oldest": int(time.time()) - 2 * 86400},
        )
