"""Scenario 4: a worker is SIGKILLed; its clients reconnect elsewhere and replay."""

from __future__ import annotations

import os
import signal

from .load import Publishers
from .scenario import CHANNELS, baseline, finish, gone, make_clients, streams_per_worker, users, wait_until


def test_sigkilled_workers_clients_reconnect_and_replay(launch, app, database_url, ledger, token, swarm_factory):
    """Under constant publishing, SIGKILL one worker, wait for the master's replacement, then
    SIGKILL the other original one: every client of a killed worker reconnects (to the survivor
    or the replacement) with its Last-Event-ID and ends up with exactly the committed events."""
    srv = launch()
    start = baseline(app)
    people = users(25)
    swarm = swarm_factory(srv)
    clients = swarm.add(make_clients(token, 200, people, start, seed=8))
    swarm.wait_open(timeout=30)
    originals = srv.worker_pids()
    assert len(originals) == 2

    with Publishers(app, people, CHANNELS, ledger, threads=4, pace=0.01, seed=8):
        for victim in originals:
            held = streams_per_worker(srv).get(victim, 0)
            target = len(ledger.committed) + 80
            wait_until(lambda t=target: len(ledger.committed) >= t, 30, "publishing before the kill")
            with swarm.lock:
                before = sum(c.connections for c in clients)
            assert srv.proc is not None and srv.proc.poll() is None, "the master died"
            os.kill(victim, signal.SIGKILL)
            t1 = wait_until(lambda v=victim: gone(v), 10, f"worker {victim} gone")
            t2 = wait_until(
                lambda v=victim: len(srv.worker_pids()) == 2 and v not in srv.worker_pids(),
                20,
                "the master replaced the killed worker",
            )
            t3 = swarm.wait(
                lambda b=before, h=held: sum(c.connections for c in clients) >= b + h and all(c.open for c in clients),
                30,
                f"the {held} clients of worker {victim} reconnected",
            )
            print(f"kill {victim} ({held} streams): gone {t1:.1f}s, replaced {t2:.1f}s, clients back {t3:.1f}s")
        target = len(ledger.committed) + 80
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing after the kills")

    finish(swarm, app, database_url, ledger)
    with swarm.lock:
        moved = sum(1 for c in clients if c.connections > 1)
        abrupt = {e.kind for c in clients for e in c.ends}
    assert moved >= 100, f"only {moved} clients reconnected after two workers were killed"
    assert not any(k.startswith("http-") for k in abrupt), abrupt
