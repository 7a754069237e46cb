"""Scenario 5: deploys (SIGTERM to a worker, SIGHUP to the master, max_requests recycling).

Open streams end at once and cleanly (no ``error`` event, the last block a fresh ``retry:``,
the chunked response properly terminated), the worker exits well inside gunicorn's
``graceful_timeout`` (20 s in gunicorn.conf.py) even with 1,000 open streams, and the clients
reconnect to a live worker and replay, missing nothing.
"""

from __future__ import annotations

import http.client
import os
import signal
import time

from .load import Publishers
from .scenario import (
    baseline,
    finish,
    gone,
    make_clients,
    master_alive,
    streams_per_worker,
    users,
    wait_until,
)
from .swarm import Swarm, VClient

GRACEFUL_TIMEOUT = 20.0


def assert_clean_ends(swarm: Swarm, clients: list[VClient], since: float, at_least: int) -> int:
    """Every stream that ended after ``since`` was a clean drain: complete response, its last
    block a lone ``retry:``, no error event.

    A reconnect attempt that reaches a worker in its last instant may be reset before any byte
    of a response (``messages == 0``): EventSource treats that as a network error and retries,
    nothing is lost. Those are no stream ending; a few are tolerated and their number returned."""
    with swarm.lock:
        ends = [(c.index, e) for c in clients for e in c.ends if e.at >= since]
    streams = [(i, e) for i, e in ends if e.messages > 0]
    attempts = len(ends) - len(streams)
    bad = [(i, e) for i, e in streams if e.kind != "clean" or not e.last_was_retry or e.error_events]
    assert len(streams) >= at_least, f"only {len(streams)} streams ended, expected at least {at_least}"
    assert not bad, f"{len(bad)} of {len(streams)} drained streams did not end cleanly after a retry: {bad[:5]}"
    assert attempts <= max(10, len(streams) // 50), f"{attempts} reconnect attempts got no response at all"
    return attempts


def test_sigterm_worker_with_1000_streams(launch, app, database_url, ledger, token, swarm_factory):
    srv = launch()
    start = baseline(app)
    people = users(100)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 1000, people, start, seed=9, channels=()))
    swarm.wait_open(timeout=90)
    per_worker = streams_per_worker(srv)
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    held = per_worker[victim]

    with Publishers(app, people, (), ledger, threads=3, pace=0.02, broadcast_share=0.02, seed=9):
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing before the deploy")
        signalled = time.monotonic()
        os.kill(victim, signal.SIGTERM)
        ended = swarm.wait(
            lambda: sum(1 for c in clients for e in c.ends if e.at >= signalled) >= held,
            15,
            f"the {held} streams of worker {victim} ended",
        )
        exited = wait_until(lambda: gone(victim), GRACEFUL_TIMEOUT, f"worker {victim} exits")
        wait_until(
            lambda: master_alive(srv) and len(srv.worker_pids()) == 2 and victim not in srv.worker_pids(),
            30,
            "the master replaced the worker",
        )
        swarm.wait(lambda: master_alive(srv) and all(c.open for c in clients), 60, "all streams open again")
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the deploy")

    finish(swarm, app, database_url, ledger, timeout=60)
    dropped = assert_clean_ends(swarm, clients, signalled, at_least=held)
    print(f"SIGTERM: {held} streams ended in {ended:.1f}s, worker exited after {exited:.1f}s ({dropped} resets)")
    assert ended < GRACEFUL_TIMEOUT / 2, f"streams took {ended:.1f}s to end"
    assert exited < GRACEFUL_TIMEOUT / 2, f"worker took {exited:.1f}s to exit (graceful_timeout {GRACEFUL_TIMEOUT}s)"


def test_sighup_reload_with_400_streams(launch, app, database_url, ledger, token, swarm_factory):
    srv = launch()
    start = baseline(app)
    people = users(100)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 400, people, start, seed=10, channels=()))
    swarm.wait_open(timeout=90)
    old = srv.worker_pids()
    held = sum(streams_per_worker(srv).values())

    with Publishers(app, people, (), ledger, threads=3, pace=0.02, broadcast_share=0.02, seed=10):
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing before the reload")
        assert srv.proc is not None
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGHUP)
        exited = wait_until(lambda: all(gone(pid) for pid in old), GRACEFUL_TIMEOUT, f"old workers {old} exit")
        wait_until(
            lambda: master_alive(srv) and len(srv.worker_pids()) == 2 and not set(old) & set(srv.worker_pids()),
            30,
            "new workers",
        )
        swarm.wait(lambda: master_alive(srv) and all(c.open for c in clients), 60, "all streams open again")
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the reload")

    finish(swarm, app, database_url, ledger, timeout=60)
    dropped = assert_clean_ends(swarm, clients, signalled, at_least=held)
    print(f"SIGHUP: {held} streams, old workers exited after {exited:.1f}s ({dropped} resets)")
    assert exited < GRACEFUL_TIMEOUT / 2, f"old workers took {exited:.1f}s to exit"


def test_max_requests_recycling(launch, app, database_url, ledger, token, swarm_factory):
    """``--max-requests 500``: 400 streams, then plain requests until both workers recycle."""
    srv = launch(env={"GUNICORN_CMD_ARGS": "--max-requests 500"})
    start = baseline(app)
    people = users(50)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 400, people, start, seed=11))
    swarm.wait_open(timeout=60)
    old = srv.worker_pids()

    with Publishers(app, people, (), ledger, threads=3, pace=0.02, broadcast_share=0.05, seed=11):
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing before recycling")
        began = time.monotonic()
        requests = resets = 0
        while master_alive(srv) and not all(gone(pid) for pid in old):
            assert time.monotonic() - began < 45, f"workers {old} not recycled after {requests} requests"
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
            try:
                conn.request("GET", "/healthz", headers={"Connection": "close"})
                conn.getresponse().read()
            except (ConnectionResetError, http.client.RemoteDisconnected):
                resets += 1  # a request that reached a worker in its last instant; a client retries
            finally:
                conn.close()
            requests += 1
        recycled = time.monotonic() - began
        wait_until(lambda: master_alive(srv) and len(srv.worker_pids()) == 2, 30, "new workers")
        swarm.wait(lambda: master_alive(srv) and all(c.open for c in clients), 60, "all streams open again")
        target = len(ledger.committed) + 50
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after recycling")

    finish(swarm, app, database_url, ledger, timeout=60)
    dropped = assert_clean_ends(swarm, clients, began, at_least=300)
    print(
        f"max_requests: both workers recycled after {requests} requests in {recycled:.1f}s "
        f"({resets} requests and {dropped} stream attempts reset)"
    )
    assert resets <= 10, f"{resets} of {requests} plain requests were reset"
