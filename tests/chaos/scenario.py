"""Building blocks shared by the chaos scenarios: clients, a baseline, the final exact check."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from notifications import publish
from tests.support.server import GunicornServer

from .load import Ledger, assert_exact, assert_no_errors, check_ledger, committed_events, committed_tags
from .swarm import Swarm, VClient

CHANNELS = ("alpha", "beta", "gamma", "delta")


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def make_clients(
    token: Callable[[str], str],
    count: int,
    user_ids: Sequence[str],
    start_id: int,
    seed: int = 0,
    channels: Sequence[str] = CHANNELS,
    **kwargs: Any,
) -> list[VClient]:
    """``count`` clients over ``user_ids`` (several tabs per user), each reading 0–2 channels."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        user = user_ids[i % len(user_ids)]
        chosen = tuple(sorted(rnd.sample(list(channels), rnd.randint(0, min(2, len(channels))))))
        out.append(VClient(index=i, user=user, token=token(user), channels=chosen, start_id=start_id, **kwargs))
    return out


def baseline(app: Any) -> int:
    """Publish one broadcast and return its id: clients start from here (Last-Event-ID)."""
    with app.app_context():
        return int(publish("chaos-start", {"start": True}))


def finish(
    swarm: Swarm,
    app: Any,
    database_url: str,
    ledger: Ledger,
    clients: Sequence[VClient] | None = None,
    timeout: float = 40.0,
    resets: bool = True,
) -> int:
    """Publish a broadcast sentinel after every publisher stopped, wait until every client has
    it, then check each client's ids against the table. Returns the deliveries checked."""
    group = list(swarm.clients if clients is None else clients)
    with app.app_context():
        sentinel = int(publish("chaos-end", {"end": True}))
    swarm.wait_received(sentinel, group, timeout=timeout)
    truth = committed_events(database_url)
    check_ledger(ledger, truth, committed_tags(database_url))
    with swarm.lock:
        assert_no_errors(group, resets=resets)
        return assert_exact(group, truth, ledger, upto=sentinel)


# ---------------------------------------------------------------------------- processes


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll a condition until it holds; fail at the deadline. Returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)  # polling interval of a condition with a deadline
    return time.monotonic() - start


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def streams_per_worker(srv: GunicornServer) -> dict[int, int]:
    """pid → established TCP connections on the server port (client streams)."""
    out = {}
    for pid in srv.worker_pids():
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        out[pid] = sum(1 for c in conns if c.laddr and c.laddr.port == srv.port and c.status == psutil.CONN_ESTABLISHED)
    return out


def signal_worker(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)


def master_alive(srv: GunicornServer) -> bool:
    """True while the gunicorn master runs; fails at once (with its log) when it has exited."""
    assert srv.proc is not None
    code = srv.proc.poll()
    if code is not None:
        raise AssertionError(f"the gunicorn master exited with {code}\n{srv.log_without_access(60)}")
    return True
