"""Metrics move with the traffic; health follows the database down and back."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support import pg
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer
from tests.support.tokens import mint


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg.Cluster]:
    """A cluster of this module's own (even with ``DATABASE_URL`` set): the health test stops
    and restarts it."""
    with pg.throwaway_cluster("notifications-ops-pg-") as own:
        yield own


@pytest.fixture(scope="module")
def database_url(cluster: pg.Cluster) -> str:
    return pg.create_database(cluster.admin_url, "ops")


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_LISTENER_PROBE_INTERVAL": "1", "NOTIFICATIONS_HEARTBEAT_INTERVAL": "0.5"}


def _get(srv: GunicornServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(srv: GunicornServer, name: str, labels: str = "") -> float:
    """The value of one sample in /metrics (0 when absent)."""
    status, body = _get(srv, "/metrics")
    assert status == 200
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    found = pattern.search(body.decode())
    return float(found.group(1)) if found else 0.0


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_metrics_follow_streams_and_events(server: GunicornServer, publisher: Publisher) -> None:
    eventually(lambda: metric(server, "notifications_open_streams") == 0, "no open streams")
    delivered = metric(server, "notifications_events_delivered_total")
    opened = metric(server, "notifications_streams_opened_total")
    clients = [server.stream(token=mint(server.secret, f"metrics-{i}")) for i in range(3)]
    try:
        for c in clients:
            c.wait_connected()
        assert metric(server, "notifications_open_streams") == 3
        assert metric(server, "notifications_streams_opened_total") == opened + 3
        event_id = publisher.publish("metered", {"n": 1})
        for c in clients:
            c.wait_for_id(event_id)
        eventually(
            lambda: metric(server, "notifications_events_delivered_total") >= delivered + 3, "deliveries counted"
        )
        assert metric(server, "notifications_delivery_latency_seconds_count") >= 1
    finally:
        for c in clients:
            c.close()
    eventually(lambda: metric(server, "notifications_open_streams") == 0, "the gauge back to 0")
    assert metric(server, "notifications_streams_closed_total", '{reason="gone"}') >= 3


def test_health_follows_the_database_down_and_back(
    server: GunicornServer, publisher: Publisher, cluster: pg.Cluster
) -> None:
    status, body = _get(server, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    client = server.stream(token=mint(server.secret, "through-outage"))
    try:
        client.wait_connected()
        cluster.stop("fast")
        try:
            eventually(lambda: _get(server, "/readyz")[0] == 503, "/readyz 503 while the database is down")
            _, body = _get(server, "/readyz")
            assert json.loads(body)["database"] is False
            assert _get(server, "/healthz")[0] == 200
            beats = len([m for m in client.messages if m.event == "heartbeat"])
            client.wait_for(
                lambda m: (
                    m.event == "heartbeat" and len([x for x in client.messages if x.event == "heartbeat"]) > beats + 1
                ),
                timeout=5,
                what="heartbeats while the database is down",
            )
            assert not client.closed
        finally:
            cluster.start()
        answers: list[tuple[int, bytes]] = []
        eventually(
            lambda: answers.append(_get(server, "/readyz")) or answers[-1][0] == 200,
            "/readyz 200 once the database is back",
            timeout=20,
        )
        assert json.loads(answers[-1][1]) | {"openStreams": 0} == {
            "status": "ready",
            "database": True,
            "listener": True,
            "draining": False,
            "openStreams": 0,
        }
        event_id = publisher.publish("after-outage", {"ok": True})
        assert client.wait_for_id(event_id, timeout=10).json() == {"ok": True}
    finally:
        client.close()
