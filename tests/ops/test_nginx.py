"""The service behind a real nginx with the documented configuration (docs/nginx.conf)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, free_port
from tests.support.sse_client import SSEClient
from tests.support.tokens import mint

DOC_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "nginx.conf"
NGINX_READ_TIMEOUT = 3  # seconds: shorter than the test, longer than the heartbeat


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_HEARTBEAT_INTERVAL": "1"}


@pytest.fixture(scope="module")
def nginx(server: GunicornServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """nginx on a free port, proxying to the module's gunicorn with docs/nginx.conf."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is not installed (apt-get install nginx-light)"
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "tmp").mkdir()
    port = free_port()
    config = DOC_CONFIG.read_text().format(
        listen=f"127.0.0.1:{port}",
        upstream=f"127.0.0.1:{server.port}",
        prefix=prefix,
        read_timeout=f"{NGINX_READ_TIMEOUT}s",
    )
    (prefix / "nginx.conf").write_text(config)
    output = open(prefix / "stdout.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            status, _ = _get(port, "/healthz")
            if status == 200:
                break
            assert proc.poll() is None, (prefix / "stdout.log").read_text() + (prefix / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start proxying"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        output.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def _stream(port: int, token: str, headers: dict[str, str] | None = None) -> SSEClient:
    return SSEClient("127.0.0.1", port, params=[("token", token)], headers=headers, name="via-nginx")


def test_events_arrive_through_nginx_unbuffered(nginx: int, server: GunicornServer, publisher: Publisher) -> None:
    with _stream(nginx, mint(server.secret, "nginx-a")) as client:
        assert client.wait_headers() == 200
        assert (client.header("Content-Type") or "").startswith("text/event-stream")
        client.wait_connected()
        sent = time.monotonic()
        event_id = publisher.publish("through-nginx", {"n": 1})
        message = client.wait_for_id(event_id, timeout=2)
        assert message.json() == {"n": 1}
        # One small event, delivered while the stream stays open: nginx did not buffer it.
        assert time.monotonic() - sent < 1.5
        assert not client.closed


def test_heartbeats_keep_the_stream_open_past_nginx_timeout(nginx: int, server: GunicornServer) -> None:
    with _stream(nginx, mint(server.secret, "nginx-b")) as client:
        client.wait_connected()
        opened = time.monotonic()
        client.wait_for(
            lambda m: m.event == "heartbeat" and time.monotonic() - opened > NGINX_READ_TIMEOUT * 2,
            timeout=NGINX_READ_TIMEOUT * 2 + 5,
            what="a heartbeat after twice nginx's read timeout",
        )
        assert not client.closed


def test_last_event_id_passes_through_nginx(nginx: int, server: GunicornServer, publisher: Publisher) -> None:
    before = publisher.publish("nginx-replay", {"n": 0})
    missed = [publisher.publish("nginx-replay", {"n": i}) for i in (1, 2, 3)]
    with _stream(nginx, mint(server.secret, "nginx-c"), headers={"Last-Event-ID": str(before)}) as client:
        for event_id in missed:
            assert client.wait_for_id(event_id, timeout=5).event == "nginx-replay"
        replayed = [m.int_id for m in client.events if m.event == "nginx-replay"]
        assert replayed == missed
