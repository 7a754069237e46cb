"""Scenario 1: commit order with many concurrent publishers, late commits and rollbacks."""

from __future__ import annotations

from .load import Publishers
from .scenario import CHANNELS, baseline, finish, make_clients, users, wait_until


def test_every_stream_sees_each_committed_event_once_in_id_order(
    launch, app, database_url, ledger, token, swarm_factory
):
    """8 publisher threads: short publishes, batches, and app transactions that append, keep
    working (holding their transaction open) and then commit late or roll back. Streams that
    were open all along, and streams that join (and replay) while the publishers are busy,
    receive every committed event they may see exactly once, in id order, and no rolled-back one."""
    srv = launch()
    start = baseline(app)
    people = users(30)
    swarm = swarm_factory(srv)
    early = swarm.add(make_clients(token, 120, people, start, seed=1))
    swarm.wait_open(early, timeout=30)

    pubs = Publishers(
        app,
        people,
        CHANNELS,
        ledger,
        threads=8,
        pace=0.01,
        long_share=0.45,
        rollback_share=0.35,
        long_delay=0.04,
        seed=1,
    ).start()
    try:
        wait_until(lambda: len(ledger.committed) >= 300, 40, "300 events committed")
        # Late joiners replay from the middle of the fire, and live-join while late commits land.
        middle = max(ledger.committed)
        late = swarm.add(make_clients(token, 30, people, start, seed=2))
        late += swarm.add(make_clients(token, 30, people, middle, seed=3))
        wait_until(
            lambda: len(ledger.committed) >= 700 and len(ledger.rolled_back) >= 50,
            60,
            "700 events committed and 50 rolled back",
        )
    finally:
        pubs.stop()
    swarm.wait_open(late, timeout=30)
    delivered = finish(swarm, app, database_url, ledger)
    assert delivered > 10_000, delivered
    with swarm.lock:
        reconnected = [c.index for c in swarm.clients if c.connections != 1]
    assert not reconnected, f"streams were dropped without a fault: {reconnected[:10]}"
