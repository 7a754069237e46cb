"""Chaos tier: real PostgreSQL, real ``gunicorn -k gevent -w 2``, many reconnecting clients,
concurrent publishers, and faults (killed listeners, database restarts, slow consumers, killed
workers, deploys, reconnect storms). Every test checks that each client received exactly the
committed events it may see, once, in id order.

Run: ``.venv/bin/pytest tests/chaos -q`` (or ``-m chaos``). Each test starts its own server on a
fresh database. The tier's PostgreSQL cluster is its own (its tests stop and restart it), shared
by its tests; the JWT secret and ``token`` are the shared ones of ``tests/support/fixtures.py``.
"""

from __future__ import annotations

import functools
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg
from tests.support.fixtures import report_logs_of
from tests.support.server import GunicornServer, ServerError
from tests.support.tokens import mint

from .load import Ledger
from .swarm import Swarm

# Every chaos server: reconnects are quick (retry 200 ms ±50 %), a quiet listener connection is
# probed every second, heartbeats every second (from the support server's base environment).
CHAOS_ENV = {
    "NOTIFICATIONS_RETRY_MS": "200",
    "NOTIFICATIONS_LISTENER_PROBE_INTERVAL": "1",
    "NOTIFICATIONS_PUBLIC_CHANNELS": "alpha,beta,gamma,delta",  # scenario.CHANNELS
}


@pytest.fixture(scope="session", autouse=True)
def _open_files() -> None:
    """Thousands of sockets on both ends; gunicorn inherits the limit from this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture(scope="session")
def cluster() -> Iterator[pg.Cluster]:
    """The chaos tier's own PostgreSQL (``DATABASE_URL``'s server if set, where the tests that
    stop and restart it skip): a cluster apart from the one the other tiers share, so that a
    restart, or a test that fails with it stopped, never reaches their servers."""
    with pg.server_for_tests("notifications-chaos-pg-", stop_mode="immediate") as own:
        yield own


@pytest.fixture
def database_url(cluster: pg.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one test."""
    url = pg.create_database(cluster.admin_url, "chaos_" + request.node.name[:30])
    yield url
    try:
        pg.drop_database(cluster.admin_url, url)
    except Exception:  # noqa: BLE001 - a cluster left stopped by a failed test
        pass


@pytest.fixture
def app(database_url: str, jwt_secret: str) -> Iterator[Any]:
    """The service's Flask app in the test process, for publishing (migrates the database)."""
    from app import create_app
    from notifications.extension import get_state

    application = create_app({"DATABASE_URL": database_url, "JWT_SECRET_KEY": jwt_secret})
    yield application
    get_state(application).store.engine.dispose()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def token(token: Callable[..., str]) -> Callable[[str], str]:
    """``token(user)``: the shared ``token``, one per user and test, so that the thousands of
    clients of a test share a few tokens, as the tabs of one user do."""
    return functools.cache(token)


@pytest.fixture
def launch(
    database_url: str, jwt_secret: str, app: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., GunicornServer]]:
    """``launch(env={...})``: a serving gunicorn (2 gevent workers); stopped after the test, its
    log in the report of a failed test."""
    servers: list[GunicornServer] = []
    report_logs_of(request.node, servers)

    def make(env: dict[str, str] | None = None, workers: int = 2) -> GunicornServer:
        srv = GunicornServer(
            database_url,
            jwt_secret,
            tmp_path / f"gunicorn-{len(servers)}.log",
            env={**CHAOS_ENV, **(env or {})},
            workers=workers,
        )
        servers.append(srv)
        srv.start()
        wait_serving(srv, app)
        return srv

    yield make
    for srv in servers:
        srv.stop()


def wait_serving(srv: GunicornServer, app: Any, timeout: float = 20.0) -> None:
    """Every worker runs streams and its listener delivers an event published from here."""
    from notifications import publish

    clients, _ = srv.open_on_all_workers(
        lambda i: srv.stream(token=mint(srv.secret, f"probe-{i}"), name=f"probe-{i}"), minimum=srv.workers
    )
    try:
        with app.app_context():
            event_id = publish("probe", {"probe": True}, user_id="probe-nobody")
            sentinel = publish("probe", {"probe": True})
        del event_id
        for c in clients:
            c.wait_for_id(sentinel, timeout=timeout)
    except AssertionError as exc:
        raise ServerError(f"server up but not delivering events: {exc}") from exc
    finally:
        for c in clients:
            c.close()


@pytest.fixture
def swarm_factory() -> Iterator[Callable[[GunicornServer], Swarm]]:
    swarms: list[Swarm] = []

    def make(srv: GunicornServer, retry_cap_ms: int = 1000) -> Swarm:
        s = Swarm(srv.host, srv.port, retry_cap_ms=retry_cap_ms)
        swarms.append(s)
        return s

    yield make
    for s in swarms:
        s.close()
