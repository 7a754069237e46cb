"""Fixtures of the security tier: access control and abuse resistance, seen from the wire.

Every test talks to a real ``gunicorn -k gevent -w 2`` on loopback, backed by a real PostgreSQL.
To keep the tier fast, one *main* server (session-scoped) serves most modules; modules that need
other settings start their own servers through ``server_factory`` (module-scoped), each with the
environment it needs on top of ``tests.support.server.BASE_ENV`` (whose generous limits are
overridden per server where limits are under test).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, ServerError, wait_until_serving
from tests.support.sse_client import SSEClient
from tests.support.tokens import mint

HERE = Path(__file__).parent

# The main server's settings (DESIGN §6 names). Public channels for the grant tests, the CORS
# allowlist for the CORS tests, a small payload limit so 413 is cheap to provoke.
PUBLIC_CHANNELS = ("news", "status")
CORS_ORIGINS = "https://app.example.com,https://*.example.org"
MAX_PAYLOAD_BYTES = 4096
MAIN_ENV = {
    "NOTIFICATIONS_PUBLIC_CHANNELS": ",".join(PUBLIC_CHANNELS),
    "NOTIFICATIONS_CORS_ORIGINS": CORS_ORIGINS,
    "NOTIFICATIONS_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "security: access control and abuse resistance against a real gunicorn+gevent server"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.security)


# ---------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """``DATABASE_URL`` if set, else a throwaway cluster for the session (as in tests/integration)."""
    if os.environ.get("DATABASE_URL"):
        yield pg.sqlalchemy_url(os.environ["DATABASE_URL"])
        return
    from notifications.embedded import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="notifications-security-pg-"))
    base.chmod(0o755)  # the cluster runs as another user (PostgreSQL refuses root)
    cluster = EmbeddedPostgres(base / "data")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def main_database_url(pg_admin_url: str) -> Iterator[str]:
    url = pg.create_database(pg_admin_url, "sec_main")
    yield url
    pg.drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def database_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one module's own servers."""
    url = pg.create_database(pg_admin_url, "sec_" + request.module.__name__.rsplit(".", 1)[-1])
    yield url
    pg.drop_database(pg_admin_url, url)


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------------- servers


class ServerFactory:
    """Start servers with their own settings; all are stopped when the owner fixture ends."""

    def __init__(self, tmp: pytest.TempPathFactory, secret: str, default_url: str) -> None:
        self.tmp = tmp
        self.secret = secret
        self.default_url = default_url
        self.servers: list[GunicornServer] = []
        self.publishers: dict[str, Publisher] = {}
        self._mktemp_lock = threading.Lock()

    def publisher(self, database_url: str | None = None) -> Publisher:
        url = database_url or self.default_url
        if url not in self.publishers:
            self.publishers[url] = Publisher(url, self.secret)
        return self.publishers[url]

    def start(
        self,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "server",
        database_url: str | None = None,
        make_token: Callable[[str], str] | None = None,
        workers: int = 2,
    ) -> GunicornServer:
        url = database_url or self.default_url
        with self._mktemp_lock:  # TempPathFactory is not thread-safe (start_many)
            folder = self.tmp.mktemp(f"gunicorn-{name}")
        for tries_left in (1, 0):
            log = folder / f"gunicorn-{tries_left}.log"
            srv = GunicornServer(url, self.secret, log, env=dict(env or {}), workers=workers)
            self.servers.append(srv)
            try:
                srv.start()
                wait_until_serving(srv, self.publisher(url), make_token or (lambda sub: mint(self.secret, sub)))
                return srv
            except ServerError:
                # A master told to stop by someone else (a signal from outside the test) is not
                # this server's fault: try once more. Anything else fails at once.
                external = "Handling signal: term" in srv.log_path.read_text(errors="replace")
                print(srv.log_tail())
                srv.stop()
                if not (external and tries_left):
                    raise
            except BaseException:
                print(srv.log_tail())
                raise
        raise AssertionError("unreachable")

    def start_many(self, specs: list[dict[str, Any]]) -> list[GunicornServer]:
        """Start several servers at once (``specs``: keyword arguments of ``start``)."""
        for spec in specs:
            self.publisher(spec.get("database_url"))  # created here, not racing in the threads
        with ThreadPoolExecutor(len(specs)) as pool:
            futures = [pool.submit(lambda kw: self.start(**kw), spec) for spec in specs]
            return [f.result() for f in futures]

    def stop_all(self) -> None:
        """Stop every server, all at once (a stop waits for the workers' graceful exit)."""
        if self.servers:
            with ThreadPoolExecutor(len(self.servers)) as pool:
                list(pool.map(lambda srv: srv.stop(), self.servers))
        self.servers.clear()


@pytest.fixture(scope="session")
def main_factory(
    tmp_path_factory: pytest.TempPathFactory, jwt_secret: str, main_database_url: str
) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path_factory, jwt_secret, main_database_url)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def server(main_factory: ServerFactory) -> GunicornServer:
    """The main server, shared by the modules that need no special settings."""
    return main_factory.start(MAIN_ENV, name="main")


@pytest.fixture(scope="session")
def publisher(main_factory: ServerFactory, server: GunicornServer) -> Publisher:
    """Publishes into the main server's database from the pytest process."""
    return main_factory.publisher()


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, jwt_secret: str, database_url: str
) -> Iterator[ServerFactory]:
    """Servers with a module's own settings, on the module's own database."""
    factory = ServerFactory(tmp_path_factory, jwt_secret, database_url)
    yield factory
    factory.stop_all()


# ---------------------------------------------------------------------------------- per test


@pytest.fixture
def token(jwt_secret: str) -> Callable[..., str]:
    """``token(sub, ttl=3600, **claims)``: an HS256 token for the servers of this tier."""

    def make(sub: str, ttl: float = 3600, **claims: Any) -> str:
        return mint(jwt_secret, sub, ttl, **claims)

    return make


@pytest.fixture
def user() -> str:
    """A user id unique to the test."""
    return "user-" + secrets.token_hex(4)


@pytest.fixture
def open_stream(server: GunicornServer, clients: list[SSEClient]) -> Callable[..., SSEClient]:
    """``open_stream(token=..., params=..., headers=...)`` on the main server, closed after the test."""

    def make(*args: Any, **kwargs: Any) -> SSEClient:
        client = server.stream(*args, **kwargs)
        clients.append(client)
        return client

    return make


# ---------------------------------------------------------------------------------- the log

# What must never appear in a server log: a traceback, an unhandled-request error, a 5xx answer.
FAILURE_LINE = re.compile(
    r"Traceback \(most recent call last\)|Error handling request|stream failed|Exception on /|"
    r'" 5\d\d \d|\[CRITICAL\]|WORKER TIMEOUT|Worker \(pid:\d+\) was sent'
)


class LogWatch:
    """Read what a server logged since the last mark; fail on tracebacks and 5xx answers."""

    def __init__(self, srv: GunicornServer) -> None:
        self.srv = srv
        self.offset = self.size()

    def size(self) -> int:
        try:
            return self.srv.log_path.stat().st_size
        except OSError:
            return 0

    def since(self) -> str:
        with open(self.srv.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def mark(self) -> None:
        self.offset = self.size()

    def assert_clean(self, what: str = "") -> None:
        text = self.since()
        bad = [line for line in text.splitlines() if FAILURE_LINE.search(line)]
        assert not bad, (
            f"server log shows a failure{' after ' + what if what else ''}:\n"
            + "\n".join(bad[:20])
            + f"\n--- log since mark ---\n{text[-6000:]}"
        )


def wait_for_log(srv: GunicornServer, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
    """The whole log once ``predicate`` holds (access lines are written when a response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        text = srv.log_path.read_bytes().decode("utf-8", "replace")
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)  # polling a file with a deadline
