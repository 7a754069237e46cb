"""Chaos tier: real PostgreSQL, real ``gunicorn -k gevent -w 2``, many reconnecting clients,
concurrent publishers, and faults (killed listeners, database restarts, slow consumers, killed
workers, deploys, reconnect storms). Every test checks that each client received exactly the
committed events it may see, once, in id order.

Run: ``.venv/bin/pytest tests/chaos -q`` (or ``-m chaos``). Each test starts its own server on a
fresh database; the PostgreSQL cluster is shared by the session.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg
from tests.support.server import GunicornServer, ServerError
from tests.support.tokens import mint

from .load import Ledger
from .swarm import Swarm

HERE = Path(__file__).parent

# Every chaos server: reconnects are quick (retry 200 ms ±50 %), a quiet listener connection is
# probed every second, heartbeats every second (from the support server's base environment).
CHAOS_ENV = {
    "NOTIFICATIONS_RETRY_MS": "200",
    "NOTIFICATIONS_LISTENER_PROBE_INTERVAL": "1",
    "NOTIFICATIONS_PUBLIC_CHANNELS": "alpha,beta,gamma,delta",  # scenario.CHANNELS
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: faults under load on real PostgreSQL and gunicorn+gevent (tests/chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in getattr(item, "_chaos_servers", []):
            report.sections.append(("gunicorn log (access lines left out)", server_log(srv)))


def server_log(srv: GunicornServer, limit: int = 150) -> str:
    try:
        lines = srv.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no gunicorn log)"
    kept = [line for line in lines if not line.startswith("127.0.0.1 - ")]
    return f"{srv.log_path}:\n" + "\n".join(kept[-limit:])


@pytest.fixture(scope="session", autouse=True)
def _open_files() -> None:
    """Thousands of sockets on both ends; gunicorn inherits the limit from this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Cluster:
    """The session's PostgreSQL: an admin URL, and restart/stop for the tests that need them."""

    def __init__(self, admin_url: str, embedded: Any = None) -> None:
        self.admin_url = admin_url
        self.embedded = embedded

    def stop(self, mode: str = "fast") -> None:
        assert self.embedded is not None
        self.embedded.stop(mode=mode)

    def start(self) -> None:
        """Start the stopped cluster again; it must come back on its port (the URLs the servers
        hold keep working)."""
        assert self.embedded is not None
        port = self.embedded.port
        self.embedded.start()
        assert self.embedded.port == port, (
            f"EmbeddedPostgres.start() moved a restarted cluster from port {port} to {self.embedded.port}"
        )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("DATABASE_URL"):
        yield Cluster(pg.sqlalchemy_url(os.environ["DATABASE_URL"]))
        return
    from notifications.embedded import EmbeddedPostgres

    # PostgreSQL refuses root, so it runs as another user: its folder must be reachable (0755).
    base = Path(tempfile.mkdtemp(prefix="notifications-chaos-pg-"))
    base.chmod(0o755)
    embedded = EmbeddedPostgres(base / "data")
    try:
        yield Cluster(embedded.start(), embedded)
    finally:
        embedded.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database_url(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one test."""
    url = pg.create_database(cluster.admin_url, "chaos_" + request.node.name[:30])
    yield url
    try:
        pg.drop_database(cluster.admin_url, url)
    except Exception:  # noqa: BLE001 - a cluster left stopped by a failed test
        pass


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def app(database_url: str, secret: str) -> Iterator[Any]:
    """The service's Flask app in the test process, for publishing (migrates the database)."""
    from app import create_app
    from notifications.extension import get_state

    application = create_app({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret})
    yield application
    get_state(application).store.engine.dispose()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def token(secret: str) -> Callable[[str], str]:
    cache: dict[str, str] = {}

    def make(user: str) -> str:
        if user not in cache:
            cache[user] = mint(secret, user, 3600)
        return cache[user]

    return make


@pytest.fixture
def launch(
    database_url: str, secret: str, app: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., GunicornServer]]:
    """``launch(env={...})``: a serving gunicorn (2 gevent workers); stopped after the test."""
    servers: list[GunicornServer] = []
    request.node._chaos_servers = servers

    def make(env: dict[str, str] | None = None, workers: int = 2) -> GunicornServer:
        srv = GunicornServer(
            database_url,
            secret,
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
