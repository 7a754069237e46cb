"""The fixtures and hooks every tier shares: a pytest plugin, loaded by ``tests/conftest.py``.

Hooks: the six tier markers, registered once and applied by folder; a failed test's report
carries the log of the gunicorn server it used.

Fixtures (a tier's conftest overrides one by defining the same name):

* ``pg_admin_url`` (session): ``DATABASE_URL``'s server if set, else one throwaway cluster.
* ``database_url`` (module): a fresh database on it for one test module.
* ``jwt_secret`` (session), ``token`` and ``user`` (per test).
* ``server_env``, ``publisher``, ``server`` (module): a module's own gunicorn (2 gevent
  workers) on its database, ready when both workers deliver an event; ``open_stream`` and
  ``clients`` (per test) close every stream the test opened.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import pg
from .publisher import Publisher
from .server import GunicornServer, serving
from .sse_client import SSEClient
from .tokens import mint

TESTS = Path(__file__).resolve().parents[1]

# Every tier is a folder of tests/ and a marker of the same name (``pytest -m unit``).
TIERS = {
    "unit": "pure tests, no database, no server (tests/unit)",
    "integration": "real PostgreSQL and a real gunicorn+gevent server, read by a real SSE client (tests/integration)",
    "security": "access control and abuse resistance against a real gunicorn+gevent server (tests/security)",
    "chaos": "faults under load on real PostgreSQL and gunicorn+gevent (tests/chaos)",
    "browser": "headless Chromium against a real gunicorn server (tests/browser)",
    "ops": "nginx in front, several instances, metrics and health (tests/ops)",
}

# The servers a test started itself (``report_logs_of``), beside its ``server`` fixture.
_STARTED = pytest.StashKey[list[GunicornServer]]()


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the folder of tests/ it is in, if that folder is a tier."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


# ------------------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    # Registered here (not in pyproject) so that --strict-markers knows every tier's marker.
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item.path)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


def report_logs_of(node: pytest.Item, servers: list[GunicornServer]) -> None:
    """Have a failed ``node``'s report carry the logs of ``servers`` (a list the test's fixtures
    fill as they start servers), without their access lines."""
    node.stash[_STARTED] = servers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        server = getattr(item, "funcargs", {}).get("server")
        if server is not None and hasattr(server, "log_tail"):
            report.sections.append(("gunicorn log", server.log_tail()))
        for srv in item.stash.get(_STARTED, []):
            report.sections.append(("gunicorn log (access lines left out)", srv.log_without_access()))


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: ``DATABASE_URL`` if set, else a throwaway cluster."""
    with pg.server_for_tests("notifications-tests-pg-") as cluster:
        yield cluster.admin_url


@pytest.fixture(scope="module")
def database_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test module (named after its tier and module)."""
    yield from pg.fresh_database(pg_admin_url, "_".join(request.module.__name__.split(".")[-2:]))


# ---------------------------------------------------------------------------- tokens, users


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    """The HS256 key of the session's servers."""
    return secrets.token_urlsafe(32)


@pytest.fixture
def token(jwt_secret: str) -> Callable[..., str]:
    """``token(sub, ttl=3600, **claims)``: a valid HS256 token for the servers of this session."""

    def make(sub: str, ttl: float = 3600, **claims: Any) -> str:
        return mint(jwt_secret, sub, ttl, **claims)

    return make


@pytest.fixture
def user() -> str:
    """A user id unique to the test, so no two tests share targeted events."""
    return "user-" + secrets.token_hex(4)


# -------------------------------------------------------------------------- a module's server


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
def clients() -> Iterator[list[SSEClient]]:
    """Register clients here (``clients.append(c)``) to have them closed after the test."""
    opened: list[SSEClient] = []
    yield opened
    for c in opened:
        c.close()


@pytest.fixture
def open_stream(server: GunicornServer, clients: list[SSEClient]) -> Callable[..., SSEClient]:
    """``open_stream(token=..., params=..., headers=...)`` on the ``server`` of the test (the
    module's, or the tier's where its conftest defines one); closed after the test."""

    def make(*args: Any, **kwargs: Any) -> SSEClient:
        client = server.stream(*args, **kwargs)
        clients.append(client)
        return client

    return make
