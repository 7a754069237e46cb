"""Run the real service (gunicorn, gevent workers) on loopback for integration tests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from .sse_client import STREAM_PATH, SSEClient

ROOT = Path(__file__).resolve().parents[2]
_HERE_BIN = Path(sys.executable).parent
VENV_BIN = _HERE_BIN if (_HERE_BIN / "gunicorn").exists() else ROOT / ".venv" / "bin"

# Generous limits so that tests opening many streams for one user are never rate limited.
BASE_ENV = {
    "NOTIFICATIONS_HEARTBEAT_INTERVAL": "1",
    "NOTIFICATIONS_MAX_STREAMS_PER_USER": "10000",
    "NOTIFICATIONS_CONNECT_RATE_PER_USER": "100000/minute",
    "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": "100000/minute",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """The test process environment without settings that would leak into the service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NOTIFICATIONS_")
        and k not in {"DATABASE_URL", "JWT_SECRET_KEY", "FLASK_APP", "PYTEST_CURRENT_TEST"}
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerError(AssertionError):
    pass


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py --bind 127.0.0.1:PORT -w N wsgi:app`` in /work/main."""

    def __init__(
        self,
        database_url: str,
        secret: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        workers: int = 2,
        app: str = "wsgi:app",
    ) -> None:
        self.app = app
        self.database_url = database_url
        self.secret = secret
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.host = "127.0.0.1"
        self.env = clean_environ()
        self.env.update(BASE_ENV)
        self.env.update({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret})
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 45.0) -> None:
        self._log_file = open(self.log_path, "ab")
        cmd = [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"{self.host}:{self.port}",
            "-w",
            str(self.workers),
            self.app,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"gunicorn exited with {self.proc.returncode} during start\n{self.log_tail()}")
            try:
                status, _ = self.get("/healthz", timeout=2)
                if status == 200 and len(self.worker_pids()) == self.workers:
                    return
                last_error = f"/healthz answered {status}, workers {self.worker_pids()}"
            except OSError as exc:
                last_error = repr(exc)
            if time.monotonic() > deadline:
                raise ServerError(f"gunicorn not ready within {timeout}s ({last_error})\n{self.log_tail()}")
            time.sleep(0.1)  # polling interval of a condition with a deadline, not a synchronisation

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(10)
        # workers orphaned by a crashed master must not outlive the test session
        self._kill_group()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, limit: int = 20000) -> str:
        try:
            text = self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return "(no gunicorn log)"
        return f"----- gunicorn log ({self.log_path}) -----\n{text}"

    def log_without_access(self, limit: int = 150) -> str:
        """The last ``limit`` lines of the log that are not access lines (a test with thousands of
        streams writes thousands of those)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no gunicorn log)"
        kept = [line for line in lines if not line.startswith("127.0.0.1 - ")]
        return f"{self.log_path}:\n" + "\n".join(kept[-limit:])

    # ------------------------------------------------------------------ HTTP

    def get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stream(
        self,
        token: str | None = None,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        name: str = "",
        path: str = STREAM_PATH,
        http_version: str = "1.1",
    ) -> SSEClient:
        """Open a stream; ``token`` goes in ``?token=`` unless already in params/headers."""
        items = list(params.items()) if isinstance(params, Mapping) else list(params or ())
        if token is not None:
            items.insert(0, ("token", token))
        return SSEClient(
            self.host, self.port, path=path, params=items, headers=headers, name=name, http_version=http_version
        )

    # ------------------------------------------------------------------ processes

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return sorted(c.pid for c in psutil.Process(self.proc.pid).children() if c.is_running())
        except psutil.NoSuchProcess:
            return []

    def worker_of(self, client: SSEClient) -> int | None:
        """The pid of the worker holding the server side of ``client``'s connection."""
        return self.worker_of_address(client.local_address)

    def worker_of_address(self, address: tuple[str, int]) -> int | None:
        """The pid of the worker that accepted the connection from ``address`` (the client
        side's ``getsockname()``), or None while no worker has accepted it."""
        for pid in self.worker_pids():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            for c in conns:
                if c.raddr and (c.raddr.ip, c.raddr.port) == tuple(address):
                    return pid
        return None

    def wait_worker_of(self, client: SSEClient, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid = self.worker_of(client)
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                raise ServerError(f"no worker holds the connection from {client.local_address}")
            time.sleep(0.05)

    def open_on_all_workers(
        self,
        make: Callable[[int], SSEClient],
        minimum: int,
        timeout: float = 30.0,
    ) -> tuple[list[SSEClient], dict[int, int]]:
        """Open streams (``make(i)``) until at least ``minimum`` are open and every worker has one.

        A worker that is still booting accepts nothing, so until every worker holds a stream we
        keep connecting (up to ``timeout``), closing surplus streams that land on a worker that
        already has its share. Returns the clients and a map pid → number of clients on it.
        """
        clients: list[SSEClient] = []
        per_worker: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        attempt = 0
        try:
            while len(clients) < minimum or len(per_worker) < self.workers:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"after {attempt} connections in {timeout}s, streams are on workers "
                        f"{per_worker}; expected all of {self.worker_pids()}"
                    )
                client = make(attempt)
                attempt += 1
                client.wait_headers()
                # the first bytes (retry:) prove the worker accepted and is running the stream
                client.wait_for(lambda m: m.retry is not None, what="retry line", consume=False)
                pid = self.wait_worker_of(client)
                if pid in per_worker and len(clients) >= minimum:
                    client.close()  # surplus: wait for the other worker to come up
                    time.sleep(0.05)  # pacing of a retry loop bounded by the deadline
                    continue
                clients.append(client)
                per_worker[pid] = per_worker.get(pid, 0) + 1
        except BaseException:
            for c in clients:
                c.close()
            raise
        return clients, per_worker


def wait_until_serving(
    srv: GunicornServer,
    publisher: Any,
    make_token: Callable[[str], str] | None = None,
    timeout: float = 20.0,
) -> None:
    """Both workers run streams, and their listeners deliver an event published from here
    (``publisher``: a ``tests.support.publisher.Publisher`` on the server's database)."""
    from .tokens import mint

    make = make_token or (lambda sub: mint(srv.secret, sub))
    clients, _ = srv.open_on_all_workers(lambda i: srv.stream(token=make(f"probe-{i}"), name=f"probe-{i}"), minimum=2)
    try:
        event_id = publisher.publish("probe", {"probe": True})
        for c in clients:
            c.wait_for_id(event_id, timeout=timeout)
    except AssertionError as exc:
        raise ServerError(f"server up but not delivering events: {exc}\n{srv.log_tail()}") from exc
    finally:
        for c in clients:
            c.close()


def serving(
    name: str,
    database_url: str,
    jwt_secret: str,
    publisher: Any,
    tmp_path_factory: pytest.TempPathFactory,
    **options: Any,
) -> Iterator[GunicornServer]:
    """Start a ``GunicornServer(**options)``, yield it once every worker serves, stop it after
    (printing its log if the module failed): the body of a module-scoped server fixture."""
    log = tmp_path_factory.mktemp(name) / "gunicorn.log"
    srv = GunicornServer(database_url, jwt_secret, log, **options)
    try:
        srv.start()
        wait_until_serving(srv, publisher)
        yield srv
    except BaseException:
        print(srv.log_tail())
        raise
    finally:
        srv.stop()
