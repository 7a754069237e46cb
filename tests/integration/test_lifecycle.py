"""Shutdown: SIGTERM ends open streams promptly and cleanly, and gunicorn exits with status 0."""

from __future__ import annotations

import signal

import pytest

from tests.support.server import GunicornServer, wait_until_serving
from tests.support.tokens import mint


@pytest.fixture
def own_server(database_url, jwt_secret, publisher, tmp_path):
    srv = GunicornServer(database_url, jwt_secret, tmp_path / "gunicorn.log")
    try:
        srv.start()
        wait_until_serving(srv, publisher)
        yield srv
    finally:
        srv.stop()


def test_sigterm_ends_streams_cleanly_and_exits_zero(own_server, jwt_secret):
    clients, _ = own_server.open_on_all_workers(
        lambda i: own_server.stream(mint(jwt_secret, f"u{i}"), name=f"s{i}"), minimum=4
    )
    try:
        for c in clients:
            c.wait_connected()
        assert own_server.proc is not None
        own_server.proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.wait_closed(timeout=10)
            assert not [m for m in c.messages if m.type == "error"], c.raw
        returncode = own_server.proc.wait(20)
        log = own_server.log_tail()
        assert returncode == 0, f"gunicorn exited with {returncode}\n{log}"
        assert "Traceback" not in log, log
    finally:
        for c in clients:
            c.close()
