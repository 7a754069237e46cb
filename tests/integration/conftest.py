"""Fixtures of the integration tier: PostgreSQL cluster, per-module database, gunicorn server."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, serving
from tests.support.sse_client import SSEClient
from tests.support.tokens import mint


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: ``DATABASE_URL`` if set, else a throwaway cluster."""
    if os.environ.get("DATABASE_URL"):
        yield pg.sqlalchemy_url(os.environ["DATABASE_URL"])
        return
    from notifications.embedded import EmbeddedPostgres

    # PostgreSQL refuses root, so the cluster runs as another user: its folder must be reachable
    # by that user, which pytest's private (0700) tmp folders are not.
    base = Path(tempfile.mkdtemp(prefix="notifications-tests-pg-"))
    base.chmod(0o755)
    cluster = EmbeddedPostgres(base / "data")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def database_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test module."""
    url = pg.create_database(pg_admin_url, "t_" + request.module.__name__.rsplit(".", 1)[-1])
    yield url
    pg.drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def jwt_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    """Extra environment for this module's server; override it in a test module."""
    return {}


@pytest.fixture(scope="module")
def publisher(database_url: str, jwt_secret: str) -> Publisher:
    """The publish API, used from the pytest process (separate from gunicorn's processes)."""
    return Publisher(database_url, jwt_secret)


@pytest.fixture(scope="module")
def server(
    database_url: str,
    jwt_secret: str,
    server_env: dict[str, str],
    publisher: Publisher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornServer]:
    """A real gunicorn with 2 gevent workers; ready when both workers deliver a published event."""
    yield from serving("gunicorn", database_url, jwt_secret, publisher, tmp_path_factory, env=server_env)


@pytest.fixture
def token(jwt_secret: str) -> Callable[..., str]:
    """``token(sub, ttl=3600, **claims)``: a valid HS256 token for this module's server."""

    def make(sub: str, ttl: float = 3600, **claims: Any) -> str:
        return mint(jwt_secret, sub, ttl, **claims)

    return make


@pytest.fixture
def open_stream(server: GunicornServer) -> Iterator[Callable[..., SSEClient]]:
    """``open_stream(token=..., params=..., headers=...)``; every stream is closed after the test."""
    opened: list[SSEClient] = []

    def make(*args: Any, **kwargs: Any) -> SSEClient:
        client = server.stream(*args, **kwargs)
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def user() -> str:
    """A user id unique to the test, so no two tests share targeted events."""
    return "user-" + secrets.token_hex(4)
