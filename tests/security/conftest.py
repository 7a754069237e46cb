"""Fixtures of the security tier: access control and abuse resistance, seen from the wire.

Every test talks to a real ``gunicorn -k gevent -w 2`` on loopback, backed by a real PostgreSQL.
To keep the tier fast, one *main* server (session-scoped) serves most modules; modules that need
other settings start their own servers through ``server_factory`` (module-scoped), each with the
environment it needs on top of ``tests.support.server.BASE_ENV`` (whose generous limits are
overridden per server where limits are under test), on the module's ``database_url``.

The PostgreSQL server, per-module databases, ``jwt_secret``, ``token``, ``user`` and
``open_stream`` (here on the main server) are the shared fixtures of ``tests/support/fixtures.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support import pg
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, ServerError, wait_until_serving
from tests.support.tokens import mint

# The main server's settings (keys of the README's "Configuration" table). Public channels for the
# grant tests, the CORS allowlist for the CORS tests, a small payload limit so 413 is cheap to provoke.
PUBLIC_CHANNELS = ("news", "status")
CORS_ORIGINS = "https://app.example.com,https://*.example.org"
MAX_PAYLOAD_BYTES = 4096
MAIN_ENV = {
    "NOTIFICATIONS_PUBLIC_CHANNELS": ",".join(PUBLIC_CHANNELS),
    "NOTIFICATIONS_CORS_ORIGINS": CORS_ORIGINS,
    "NOTIFICATIONS_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
}


# ---------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def main_database_url(pg_admin_url: str) -> Iterator[str]:
    """The main server's database, for the session (a module's own servers use the shared
    per-module ``database_url``)."""
    yield from pg.fresh_database(pg_admin_url, "security_main")


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
