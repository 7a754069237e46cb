"""Scenario 6: 2,000 clients reconnect at the same moment, each with its own Last-Event-ID."""

from __future__ import annotations

import random
import threading

import psycopg2

from notifications import publish_many
from tests.support import pg

from .load import Publishers
from .scenario import CHANNELS, finish, make_clients, master_alive, users, wait_until

CLIENTS = 2000
POOL_SIZE = 5  # NOTIFICATIONS_POOL_SIZE; the pool may overflow by as much again


class ConnectionSampler(threading.Thread):
    """Sample how many server connections hold this database (every 50 ms), keep the peak."""

    def __init__(self, admin_url: str, database_url: str) -> None:
        super().__init__(daemon=True)
        self.dbname = database_url.rsplit("/", 1)[-1]
        self.conn = psycopg2.connect(pg.libpq_url(admin_url))
        self.conn.autocommit = True
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.done.wait(0.05):
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s",
                    (self.dbname, "chaos-sampler"),
                )
                self.peak = max(self.peak, int(cur.fetchone()[0]))

    def stop(self) -> int:
        self.done.set()
        self.join(5)
        self.conn.close()
        return self.peak


def test_reconnect_storm_of_2000_clients(launch, app, cluster, database_url, ledger, token, swarm_factory):
    """History is published before the workers start (so no replay comes from memory); then
    2,000 clients connect in one burst, each with a Last-Event-ID somewhere in that history,
    while publishers keep going. All succeed, none gets an error or reset, each gets exactly
    the events it missed and the live ones, and the workers stay within their database pools."""
    people = users(100)
    rnd = random.Random(12)
    with app.app_context():
        for _ in range(8):
            targets = []
            for _ in range(100):
                r = rnd.random()
                if r < 0.05:
                    targets.append((None, None))
                elif r < 0.9:
                    targets.append((rnd.choice(people), None))
                else:
                    targets.append((None, rnd.choice(CHANNELS)))
            ids = publish_many([{"event": "chaos", "data": {"n": 1}, "user_id": u, "channel": c} for u, c in targets])
            ledger.commit(ids, targets)
    history = sorted(ledger.committed)

    srv = launch()
    swarm = swarm_factory(srv)
    clients = []
    for i in range(CLIENTS):
        clients += make_clients(token, 1, [people[i % len(people)]], rnd.choice(history), seed=i)
    sampler = ConnectionSampler(cluster.admin_url, database_url)
    sampler.start()
    try:
        live = len(ledger.committed) + 100
        with Publishers(app, people, CHANNELS, ledger, threads=2, pace=0.01, broadcast_share=0.02, seed=12):
            swarm.add(clients)
            wait_until(lambda: len(ledger.committed) >= live, 30, "100 events published during the storm")
        took = swarm.wait(lambda: master_alive(srv) and all(c.open for c in clients), 90, "2,000 streams open")
    finally:
        peak = sampler.stop()

    delivered = finish(swarm, app, database_url, ledger, timeout=60)
    with swarm.lock:
        retried = sum(1 for c in clients if c.connections > 1)
    print(
        f"storm: {CLIENTS} streams open in {took:.1f}s, {delivered} events delivered, "
        f"{retried} clients needed more than one attempt, peak {peak} database connections"
    )
    assert retried == 0, f"{retried} clients needed more than one attempt"
    # two workers: each its pool (+ overflow) and its listener; the publishers' own pool here
    assert peak <= 2 * (2 * POOL_SIZE + 1) + 2 * POOL_SIZE, f"peak {peak} database connections"
