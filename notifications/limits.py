"""Abuse limits that hold across every worker and machine, kept in PostgreSQL.

* At most ``NOTIFICATIONS_MAX_STREAMS_PER_USER`` open streams per user. Each open stream is a
  row owned by its worker; workers renew a lease, so the rows of a crashed worker stop counting
  once its lease lapses and are deleted by the next clean-up.
* At most ``NOTIFICATIONS_CONNECT_RATE_PER_USER`` and ``..._PER_ADDRESS`` connection attempts
  per fixed window (``60/minute``), counted in one upsert per window.

One short transaction per connect does both checks under a per-user advisory lock, so two
connects of the same user cannot both take the last slot. Closing streams are released in
batches by a background greenlet.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import gevent
from sqlalchemy import Connection, Engine, text

from .auth import AccessError
from .schema import Names

DEFAULT_LEASE_SECONDS = 30.0
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(second|minute|hour|day)s?\s*")


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
        raise ValueError(f"invalid network list {value!r}: {exc}") from None


def parse_rate(value: object) -> Rate | None:
    """``"60/minute"`` (also second, hour, day); ``0``, ``none`` or empty turn the limit off."""
    raw = str(value if value is not None else "").strip().lower()
    if raw in ("", "0", "none", "off"):
        return None
    match = _RATE.fullmatch(raw)
    if not match:
        raise ValueError(f"invalid rate {value!r}: use N/second, N/minute, N/hour or N/day")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)])


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
    ) -> None:
        self.lease_seconds = lease_seconds
        self.engine = engine
        self.names = names
        self.max_streams = max_streams_per_user
        self.rate_per_user = rate_per_user
        self.rate_per_address = rate_per_address
        self.exempt_networks = tuple(exempt_networks)
        self.worker = f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._released: list[int] = []
        self._flusher: gevent.Greenlet | None = None
        self._last_beat = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.max_streams or self.rate_per_user or self.rate_per_address)

    def admit(self, user_id: str, address: str | None) -> int | None:
        """Count this connection; return its lease id, or raise ``AccessError`` 429."""
        if not self.enabled:
            return None
        n = self.names
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                {"ns": 0x6E6F74, "key": zlib.crc32(user_id.encode()) - 2**31},
            )
            for key, rate in (
                (f"user:{user_id}", self.rate_per_user),
                (f"addr:{address}", self.rate_per_address),
            ):
                if rate is None or (key.startswith("addr:") and not self.counts_address(address)):
                    continue
                window = int(now // rate.period) * rate.period  # the window's start, epoch s
                count = conn.execute(
                    text(
                        f'INSERT INTO {n.sql("_rates")} AS r (key, "window", count) VALUES (:key, :window, 1) '
                        'ON CONFLICT (key, "window") DO UPDATE SET count = r.count + 1 '
                        "RETURNING count"
                    ),
                    {"key": key, "window": window},
                ).scalar_one()
                if count > rate.count:
                    retry_after = max(1, math.ceil(window + rate.period - now))
                    raise AccessError(429, "too many connection attempts; try again later", retryAfter=retry_after)
            if self.max_streams:
                self.beat(conn)
                open_streams = conn.execute(
                    text(
                        f"SELECT count(*) FROM {n.sql('_streams')} s JOIN {n.sql('_workers')} w ON w.worker = s.worker "
                        "WHERE s.user_id = :user AND w.seen_at > now() - make_interval(secs => :lease)"
                    ),
                    {"user": user_id, "lease": self.lease_seconds},
                ).scalar_one()
                if open_streams >= self.max_streams:
                    raise AccessError(
                        429,
                        f"too many open streams for this user (at most {self.max_streams})",
                        retryAfter=5,
                    )
                lease: int = conn.execute(
                    text(f"INSERT INTO {n.sql('_streams')} (user_id, worker) VALUES (:user, :worker) RETURNING id"),
                    {"user": user_id, "worker": self.worker},
                ).scalar_one()
                return lease
        return None

    def counts_address(self, address: str | None) -> bool:
        """Whether connections from ``address`` count toward the per-address rate: not when it
        is unknown or in an exempt network (a local proxy makes every client look like it)."""
        if not address:
            return False
        try:
            ip = ip_address(address)
        except ValueError:
            return True
        return not any(ip in network for network in self.exempt_networks)

    def release(self, lease: int | None) -> None:
        """Forget a closed stream (batched: written within half a second)."""
        if lease is None:
            return
        self._released.append(lease)
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn_later(0.5, self._flush)

    def _flush(self) -> None:
        leases, self._released = self._released, []
        if not leases:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {self.names.sql('_streams')} WHERE id = ANY(:ids)"), {"ids": leases})
        except Exception:
            self._released.extend(leases)  # the database is away: try again later
            self._flusher = gevent.spawn_later(2.0, self._flush)

    def beat(self, conn: Connection, every: float = 0.0) -> None:
        """Renew this worker's lease (at most once per ``every`` seconds)."""
        now = time.monotonic()
        if not self.max_streams or every and now - self._last_beat < every:
            return
        conn.execute(
            text(
                f"INSERT INTO {self.names.sql('_workers')} (worker, seen_at) VALUES (:worker, now()) "
                "ON CONFLICT (worker) DO UPDATE SET seen_at = now()"
            ),
            {"worker": self.worker},
        )
        self._last_beat = now

    def open_streams(self) -> int | None:
        """Open streams across every live worker and machine (known only when the cap is on)."""
        if not self.max_streams:
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
        if not self.max_streams:
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
