"""PostgreSQL for tests: a throwaway cluster (or ``DATABASE_URL``'s server), fresh databases on it.

``tests/support/fixtures.py`` builds the session's server and the per-module databases from
these; the tiers whose tests stop and restart PostgreSQL (chaos, ``tests/ops/test_operability.py``)
take a ``throwaway_cluster`` of their own, so a restart never reaches another tier's servers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql


def libpq_url(url: str) -> str:
    """``postgresql+psycopg2://`` / ``postgres://`` → a URL psycopg2 accepts."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """Any PostgreSQL URL → the ``postgresql+psycopg2://`` form."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg2://", url)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def create_database(admin_url: str, prefix: str) -> str:
    """CREATE DATABASE with a unique name on the server of ``admin_url``; return its URL."""
    name = re.sub(r"[^a-z0-9_]", "_", f"{prefix}_{uuid.uuid4().hex[:8]}".lower())[:63]
    conn = psycopg2.connect(libpq_url(admin_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return sqlalchemy_url(with_database(admin_url, name))


def drop_database(admin_url: str, url: str) -> None:
    """DROP DATABASE (WITH FORCE: the server under test may still hold connections)."""
    name = urlsplit(url).path.lstrip("/")
    conn = psycopg2.connect(libpq_url(admin_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def query(database_url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement in autocommit; return its rows (none for a statement without)."""
    conn = psycopg2.connect(libpq_url(database_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    """Create a database, yield its URL, drop it: the body of a database fixture (``yield from``)."""
    url = create_database(admin_url, prefix)
    yield url
    drop_database(admin_url, url)


class Cluster:
    """A PostgreSQL server for tests: its ``admin_url``, and for a throwaway cluster the
    ``EmbeddedPostgres`` behind it (``embedded``; None on ``DATABASE_URL``'s server), which
    ``stop`` and ``start`` take down and bring back on the same port."""

    def __init__(self, admin_url: str, embedded: Any = None) -> None:
        self.admin_url = admin_url
        self.embedded = embedded

    def stop(self, mode: str = "fast") -> None:
        assert self.embedded is not None, "DATABASE_URL's server is not the suite's to stop"
        self.embedded.stop(mode=mode)

    def start(self) -> None:
        """Start the stopped cluster again; it must come back on its port (the URLs the servers
        hold keep working)."""
        assert self.embedded is not None, "DATABASE_URL's server is not the suite's to start"
        port = self.embedded.port
        self.embedded.start()
        assert self.embedded.port == port, (
            f"EmbeddedPostgres.start() moved a restarted cluster from port {port} to {self.embedded.port}"
        )


@contextmanager
def throwaway_cluster(prefix: str, stop_mode: str = "fast") -> Iterator[Cluster]:
    """A new ``EmbeddedPostgres`` in a fresh temp folder, stopped and deleted afterwards.

    PostgreSQL refuses root, so as root the cluster runs as another user: its folder must be
    reachable by that user (0755), which pytest's private (0700) tmp folders are not; and it is
    not under pytest's basetemp, which a concurrent pytest session may rotate away."""
    from notifications.embedded import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    embedded = EmbeddedPostgres(base / "data")
    try:
        yield Cluster(embedded.start(), embedded)
    finally:
        embedded.stop(mode=stop_mode)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def server_for_tests(prefix: str, stop_mode: str = "fast") -> Iterator[Cluster]:
    """``DATABASE_URL``'s server when it is set (``embedded`` is None), else a ``throwaway_cluster``."""
    if os.environ.get("DATABASE_URL"):
        yield Cluster(sqlalchemy_url(os.environ["DATABASE_URL"]))
        return
    with throwaway_cluster(prefix, stop_mode) as cluster:
        yield cluster
