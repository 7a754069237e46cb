"""Scenario 7: publishing without a global lock (``notifications.sequencer``).

An app transaction that published and stays open for seconds holds back no other publisher and
no delivery; its own event arrives after its commit with an id above everything delivered
before; a rollback delivers nothing; a publisher killed mid-transaction blocks nothing. The
sequencer itself is killed with its worker, its connection terminated, PostgreSQL restarted:
nothing is lost or repeated, and delivery resumes within 2 s. Every client's stream is checked
against the table as in every chaos scenario (``finish``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time

import psutil
import psycopg2
import pytest

from notifications import publish
from notifications.events import make_event
from notifications.extension import get_state
from tests.support import pg
from tests.support.server import ROOT, VENV_BIN

from .load import Publishers
from .scenario import CHANNELS, baseline, finish, gone, make_clients, users, wait_until
from .test_listener_loss import terminate

SEQUENCER = "notifications-sequencer"
RESUMED = 2.0  # the bound on a stall of delivery (seconds)


def sequencer_backend(admin_url: str, database_url: str) -> tuple[int, int] | None:
    """(backend pid, client port) of the connection holding the sequencer's lock, if any."""
    dbname = database_url.rsplit("/", 1)[-1]
    conn = psycopg2.connect(pg.libpq_url(admin_url))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND a.application_name = %s AND a.datname = %s",
                (SEQUENCER, dbname),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    assert len(rows) <= 1, f"more than one sequencer: {rows}"
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def delivered_within(swarm, app, clients, what: str) -> float:
    """Publish a marker now; seconds until every client has it."""
    with app.app_context():
        marker = int(publish("chaos-marker", {"what": what}))
    return swarm.wait_received(marker, clients, timeout=15)


def test_an_open_transaction_holds_back_no_publisher_and_no_delivery(
    launch, app, database_url, ledger, token, swarm_factory
):
    """Three app transactions publish and stay open for 3 s (one commits, one rolls back, one's
    process is SIGKILLed), while 4 publisher threads go on: every other publish returns in well
    under a second and is delivered within 2 s; the committed one arrives after its commit with
    an id above everything delivered before it; the others never arrive."""
    srv = launch()
    start = baseline(app)
    people = users(10)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 60, people, start, seed=21))
    swarm.wait_open(timeout=30)

    opened = threading.Event()
    finish_now = threading.Event()
    outcome: dict[str, object] = {}

    def hold(roll_back: bool) -> None:
        with app.app_context():
            state = get_state()
            try:
                with state.store.engine.begin() as conn:
                    ids = state.store.append_in(conn, [make_event("held", {"roll_back": roll_back})])
                    opened.set()
                    finish_now.wait(10)
                    if roll_back:
                        raise RuntimeError("rolled back")
                    outcome["committed_at"] = time.monotonic()
            except RuntimeError:
                outcome["rolled_back"] = ids
                return
        outcome["committed"] = ids

    killed = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", KILLED_PUBLISHER, database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "JWT_SECRET_KEY": "x" * 40},
    )
    assert killed.stdout is not None and killed.stdout.readline().strip() == b"open", "the publisher never opened"
    holders = [threading.Thread(target=hold, args=(rb,)) for rb in (False, True)]
    for t in holders:
        t.start()
    assert opened.wait(10)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    killed.stdout.close()

    slowest = 0.0
    with Publishers(app, people, CHANNELS, ledger, threads=4, pace=0.01, seed=21):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # the transactions stay open meanwhile
            started = time.monotonic()
            with app.app_context():
                marker = int(publish("chaos-marker", {"while": "open"}))
            slowest = max(slowest, time.monotonic() - started)
            swarm.wait_received(marker, clients, timeout=RESUMED)
        with swarm.lock:
            before_commit = max(max(c.received, default=0) for c in clients)
        finish_now.set()
        for t in holders:
            t.join(15)
        target = len(ledger.committed) + 40
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the commit")

    assert slowest < 1.0, f"a publish took {slowest:.2f} s while the transactions were open"
    assert "committed" in outcome and "rolled_back" in outcome, outcome
    delivered = finish(swarm, app, database_url, ledger)
    assert delivered > 0
    rows = pg.query(database_url, "SELECT id, data FROM notification_events WHERE event = 'held'")
    assert [data["roll_back"] for _, data in rows] == [False], rows  # the rollback and the killed: nothing
    held_id = rows[0][0]
    assert held_id > before_commit, (held_id, before_commit)
    with swarm.lock:
        got = [c for c in clients if held_id in c.received]
    assert len(got) == len(clients), "the committed event did not reach every stream"


KILLED_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from app import create_app
    from notifications.events import make_event
    from notifications.extension import get_state

    app = create_app({"DATABASE_URL": sys.argv[1]})
    with app.app_context():
        state = get_state()
        with state.store.engine.begin() as conn:
            state.store.append_in(conn, [make_event("held", {"roll_back": "killed"})])
            print("open", flush=True)
            time.sleep(60)
    """
)


def test_the_sequencer_killed_with_its_worker_is_replaced(
    launch, app, cluster, database_url, ledger, token, swarm_factory
):
    """SIGKILL the worker that is the sequencer, twice, under constant publishing: another
    worker takes over, delivery resumes within 2 s, and every stream gets every event once."""
    srv = launch()
    start = baseline(app)
    people = users(20)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 100, people, start, seed=22))
    swarm.wait_open(timeout=30)
    stalls = []
    with Publishers(app, people, CHANNELS, ledger, threads=4, pace=0.01, seed=22):
        for round_ in range(2):
            target = len(ledger.committed) + 60
            wait_until(lambda t=target: len(ledger.committed) >= t, 30, f"publishing, round {round_}")
            backend = wait_until_value(lambda: sequencer_backend(cluster.admin_url, database_url), 10, "a sequencer")
            leader = worker_with_local_port(srv, backend[1])
            assert leader in srv.worker_pids(), (leader, srv.worker_pids())
            os.kill(leader, signal.SIGKILL)
            wait_until(lambda v=leader: gone(v), 10, f"worker {leader} gone")
            survivors = survivors_of(swarm, clients)
            stalls.append(delivered_within(swarm, app, survivors, f"after killing {leader}"))
            wait_until(lambda v=leader: len(srv.worker_pids()) == 2 and v not in srv.worker_pids(), 20, "replaced")
        target = len(ledger.committed) + 60
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the kills")
    finish(swarm, app, database_url, ledger)
    assert max(stalls) < RESUMED, f"delivery resumed after {stalls} s"


def test_the_sequencers_connection_terminated(launch, app, cluster, database_url, ledger, token, swarm_factory):
    """pg_terminate_backend on the sequencer's connection, three times: the lock passes on (or
    the same worker wins it back), delivery resumes within 2 s, nothing lost or repeated."""
    srv = launch()
    start = baseline(app)
    people = users(20)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 100, people, start, seed=23))
    swarm.wait_open(timeout=30)
    stalls = []
    with Publishers(app, people, CHANNELS, ledger, threads=4, pace=0.01, seed=23):
        for round_ in range(3):
            target = len(ledger.committed) + 60
            wait_until(lambda t=target: len(ledger.committed) >= t, 30, f"publishing, round {round_}")
            pid, _ = wait_until_value(lambda: sequencer_backend(cluster.admin_url, database_url), 10, "a sequencer")
            terminate(cluster.admin_url, {pid})
            stalls.append(delivered_within(swarm, app, clients, f"after terminating {pid}"))
        target = len(ledger.committed) + 60
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the terminations")
    finish(swarm, app, database_url, ledger)
    assert max(stalls) < RESUMED, f"delivery resumed after {stalls} s"
    with swarm.lock:
        dropped = [c.index for c in clients if c.connections != 1]
    assert not dropped, f"streams were dropped: {dropped[:10]}"


def test_delivery_resumes_soon_after_a_database_restart(
    launch, app, cluster, database_url, ledger, token, swarm_factory
):
    """PostgreSQL restarts (immediate: in-flight transactions are lost); once it accepts
    connections again, a publish is delivered within 2 s, and nothing is lost or repeated."""
    if cluster.embedded is None:
        pytest.skip("needs the suite's own PostgreSQL cluster (DATABASE_URL is set)")
    srv = launch()
    start = baseline(app)
    people = users(20)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 100, people, start, seed=24))
    swarm.wait_open(timeout=30)
    with Publishers(app, people, CHANNELS, ledger, threads=4, pace=0.01, seed=24):
        wait_until(lambda: len(ledger.committed) >= 100, 30, "publishing before the restart")
        cluster.stop("immediate")
        cluster.start()
        wait_until(lambda: _accepts(database_url), 20, "the database accepting connections")
        stall = delivered_within(swarm, app, clients, "after the restart")
        target = len(ledger.committed) + 100
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the restart")
    finish(swarm, app, database_url, ledger, timeout=40)
    assert stall < RESUMED, f"delivery resumed {stall:.1f} s after the database was back"


# ---------------------------------------------------------------------------- helpers


def wait_until_value(probe, timeout: float, what: str):  # type: ignore[no-untyped-def]
    found: list[object] = []
    wait_until(lambda: bool(found.append(probe()) or found[-1]), timeout, what)
    return found[-1]


def survivors_of(swarm, clients):  # type: ignore[no-untyped-def]
    """The clients whose stream is open right now (those of a killed worker are reconnecting)."""
    with swarm.lock:
        return [c for c in clients if c.open]


def worker_with_local_port(srv, port: int) -> int | None:  # type: ignore[no-untyped-def]
    """The worker whose connection leaves from ``port`` (the sequencer's, seen by PostgreSQL)."""
    for pid in srv.worker_pids():
        try:
            if any(c.laddr and c.laddr.port == port for c in psutil.Process(pid).net_connections(kind="tcp")):
                return pid
        except psutil.NoSuchProcess:
            continue
    return None


def _accepts(database_url: str) -> bool:
    try:
        psycopg2.connect(pg.libpq_url(database_url)).close()
    except psycopg2.OperationalError:
        return False
    return True
