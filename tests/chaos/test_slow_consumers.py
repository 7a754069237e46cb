"""Scenario 3: clients that stop reading are closed by the server; nobody else notices."""

from __future__ import annotations

import psutil

from .load import Publishers
from .scenario import CHANNELS, baseline, finish, make_clients, users, wait_until
from .swarm import VClient


def server_holds(srv, client: VClient) -> bool:
    """Whether some worker still has the server side of ``client``'s current connection."""
    for pid in srv.worker_pids():
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and (c.raddr.ip, c.raddr.port) == tuple(client.local) for c in conns):
            return True
    return False


def test_slow_consumer_is_closed_others_unaffected_and_it_replays(
    launch, app, database_url, ledger, token, swarm_factory
):
    """Three clients with a 4 KiB receive buffer stop reading while 16 KiB events pour in
    (NOTIFICATIONS_QUEUE_SIZE=20): the server closes each of their streams. The other clients
    keep their one connection and miss nothing; the slow ones, once they read again, reconnect
    with their Last-Event-ID and replay everything they missed, exactly once."""
    srv = launch(env={"NOTIFICATIONS_QUEUE_SIZE": "20"})
    start = baseline(app)
    people = users(6)
    swarm = swarm_factory(srv)
    fast = swarm.add(make_clients(token, 24, people, start, seed=6))
    slow = swarm.add(make_clients(token, 3, people, start, seed=7, rcvbuf=4096))
    swarm.wait_open(timeout=30)
    for c in slow:
        swarm.pause(c)
    slow_addresses = [c.local for c in slow]

    with Publishers(
        app,
        people,
        CHANNELS,
        ledger,
        threads=3,
        pace=0.01,
        broadcast_share=0.6,
        payload_bytes=16_000,
        long_share=0.2,
        seed=6,
    ):
        took = wait_until(
            lambda: not any(server_holds(srv, c) for c in slow),
            30,
            "the server closes the slow streams",
            interval=0.2,
        )
        target = len(ledger.committed) + 40
        wait_until(lambda: len(ledger.committed) >= target, 30, "publishing while the slow ones are gone")
        with swarm.lock:
            assert [c.local for c in slow] == slow_addresses, "a paused client reconnected by itself"
            assert all(c.connections == 1 for c in slow)
        for c in slow:
            swarm.resume(c)
        swarm.wait(lambda: all(c.connections >= 2 and c.open for c in slow), 20, "slow clients reconnected")

    finish(swarm, app, database_url, ledger)
    with swarm.lock:
        dropped = [c.index for c in fast if c.connections != 1]
        slow_ends = [[e.kind for e in c.ends] for c in slow]
    assert not dropped, f"clients that kept reading were dropped: {dropped}"
    assert all(ends for ends in slow_ends), slow_ends
    print(f"slow streams closed by the server after {took:.1f}s; their ends: {slow_ends}")
