"""PostgreSQL for tests: one throwaway cluster per session, one fresh database per module."""

from __future__ import annotations

import re
import uuid
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
