"""The notifications benchmark suite: ``.venv/bin/python bench/run.py [--quick] [--soak] [--compare]``.

It starts a real PostgreSQL (``DATABASE_URL`` if set, else an embedded throwaway cluster) and
the real service (``gunicorn -c gunicorn.conf.py wsgi:app``, ONE gevent worker pinned to CPU 0),
drives it with its own Go load generator (``bench/loadgen``, built into ``bench/.build`` on first
run, pinned to CPU 1), checks every target of the performance issue and prints a table with
PASS/FAIL. Results go to ``bench/results/latest.json`` (git-ignored), a summary to
``bench/RESULTS.md`` and the plot to ``docs/bench.png``.

``--compare`` runs the same stream loads against the plain Flask + gevent reference server in
``../shared/tools/reference`` (and nginx + Nchan when installed) so ratios can be reported.
``--profile`` attaches py-spy to the worker during a 1,000 x 10/s run and a churn run (after
the measured phases: py-spy itself costs the worker CPU) and writes speedscope profiles.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / ".build"
RESULTS = BENCH / "results"
LOADGEN_SRC = BENCH / "loadgen"
LOADGEN = BUILD / "loadgen"
VENV_BIN = Path(sys.executable).parent
REFERENCE = (ROOT.parent / "shared" / "tools" / "reference").resolve()
SERVER_CPU = "0"
LOADGEN_CPU = "1"
BODY = '{"event":"bench","data":{"seq":{{seq}},"t":{{t}}}}'

sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- set-up


def build_loadgen() -> None:
    """Build the Go load generator into bench/.build when missing or older than its sources."""
    sources = list(LOADGEN_SRC.glob("*.go")) + [LOADGEN_SRC / "go.mod"]
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists():
        sys.exit("bench: Go is needed to build the load generator: apt-get install -y golang-go")
    BUILD.mkdir(parents=True, exist_ok=True)
    log("building the load generator")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOCACHE": str(BUILD / "gocache")}
    subprocess.run([go, "build", "-o", str(LOADGEN), "."], cwd=LOADGEN_SRC, env=env, check=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    for value in (max(want, 65536), want):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (value, max(value, hard)))
            break
        except (ValueError, OSError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 11000:
        log(f"warning: open-files limit is {soft}; 10,000 streams need about 10,500 per process")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Database:
    """DATABASE_URL if set, else a throwaway embedded cluster in a 0755 temp folder."""

    def __init__(self) -> None:
        self.url = os.environ.get("DATABASE_URL", "")
        self.embedded: Any = None
        self.folder: str | None = None

    def start(self) -> str:
        if self.url:
            log("using DATABASE_URL")
            return self.url
        from notifications.embedded import EmbeddedPostgres

        self.folder = tempfile.mkdtemp(prefix="notifications-bench-")
        os.chmod(self.folder, 0o755)  # as root the cluster runs as postgres, which must reach it
        self.embedded = EmbeddedPostgres(os.path.join(self.folder, "pgdata"))
        self.url = self.embedded.start()
        log(f"embedded PostgreSQL at {self.url}")
        return self.url

    def settings(self) -> dict[str, str]:
        from sqlalchemy import create_engine, text

        engine = create_engine(
            self.url if "+psycopg2" in self.url else self.url.replace("postgresql://", "postgresql+psycopg2://", 1)
        )
        out = {}
        with engine.connect() as conn:
            for name in ("fsync", "synchronous_commit", "wal_sync_method", "server_version"):
                out[name] = str(conn.execute(text(f"SHOW {name}")).scalar())
        engine.dispose()
        return out

    def fsync_rate(self) -> float | None:
        """fdatasync calls per second on the temp folder's disk (pg_test_fsync, one 8 kB write):
        the ceiling of serialised durable commits."""
        try:
            from notifications.embedded import find_binaries

            folders = [find_binaries(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
            tool = next(f / "pg_test_fsync" for f in folders if (f / "pg_test_fsync").exists())
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run(
                    [str(tool), "-s", "1", "-f", os.path.join(folder, "probe")],
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
        except (OSError, subprocess.SubprocessError, ImportError, StopIteration):
            return None
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == "fdatasync" and "ops/sec" in line:
                return float(fields[1])
        return None

    def stop(self) -> None:
        if self.embedded is not None and self.embedded.started_here:
            self.embedded.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Server:
    """One server under test: a process group pinned to CPU 0, and the pid to measure."""

    name = "server"
    stream_path = "/"
    publish_path = "/"
    churn_until = "first"
    supports_replay = False

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker = 0
        self.logfile: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stream_url(self) -> str:
        return self.base + self.stream_path

    def publish_url(self) -> str:
        return self.base + self.publish_path

    def publish_headers(self) -> list[str]:
        return []

    def body(self) -> str:
        return BODY

    def command(self) -> tuple[list[str], dict[str, str], str]:
        raise NotImplementedError

    def start(self) -> None:
        cmd, env, cwd = self.command()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.logfile = open(RESULTS / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *cmd],
            env=env,
            cwd=cwd,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: see {RESULTS / (self.name + '.log')}")
            kids = children(self.proc.pid)
            if kids and self.ready():
                self.worker = kids[0]
                log(f"{self.name}: master {self.proc.pid}, worker {self.worker}, port {self.port}")
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready")

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def open_streams(self) -> int | None:
        return None

    def wait_idle(self, timeout: float = 15) -> float | None:
        """Seconds until the server counts no open stream (None: it does not say)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            n = self.open_streams()
            if n is None:
                time.sleep(1)
                return None
            if n == 0:
                return time.monotonic() - t0
            time.sleep(0.1)
        return -1.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.logfile is not None:
            self.logfile.close()


# The three connection limits stay on and are enforced on every connect (the shipped defaults'
# code path), with values no phase reaches: one user opens 10,000 streams and 2,000 a second
# from loopback, which is not exempt here. ``--limits-off`` switches them off instead.
LIMITS_HIGH = {
    "NOTIFICATIONS_MAX_STREAMS_PER_USER": "1000000",
    "NOTIFICATIONS_CONNECT_RATE_PER_USER": "100000000/hour",
    "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": "100000000/hour",
    "NOTIFICATIONS_RATE_LIMIT_EXEMPT": "",
}
LIMITS_OFF = {
    "NOTIFICATIONS_MAX_STREAMS_PER_USER": "0",
    "NOTIFICATIONS_CONNECT_RATE_PER_USER": "0",
    "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": "0",
}


class Project(Server):
    name = "notifications"
    stream_path = "/api/notifications/stream"
    publish_path = "/api/notifications/publish"
    churn_until = "named"  # the connect message: the stream is authenticated and live
    supports_replay = True

    def __init__(self, database_url: str, limits: bool = True) -> None:
        super().__init__()
        self.database_url = database_url
        self.secret = secrets.token_hex(32)
        self.limits = limits
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": self.secret,
            "NOTIFICATIONS_CONNECT_MESSAGE": "true",
            **(LIMITS_HIGH if limits else LIMITS_OFF),
            "NOTIFICATIONS_MAX_STREAM_LIFETIME": "0",
            "WEB_CONCURRENCY": "1",
            "PORT": str(self.port),
        }
        self.stream_token, self.publish_token = self._tokens()

    def _tokens(self) -> tuple[str, str]:
        from app import create_app
        from notifications.cli import mint_token

        app = create_app({"DATABASE_URL": self.database_url, "JWT_SECRET_KEY": self.secret})
        with app.app_context():
            return mint_token("bench-user", ttl=86400), mint_token("bench-publisher", publish=("*",), ttl=86400)

    def stream_url(self, token: str | None = None) -> str:
        return f"{self.base}{self.stream_path}?token={token or self.stream_token}"

    def fresh_tokens(self, n: int) -> list[str]:
        """``n`` stream tokens of ``n`` different users."""
        from app import create_app
        from notifications.cli import mint_token

        app = create_app({"DATABASE_URL": self.database_url, "JWT_SECRET_KEY": self.secret})
        with app.app_context():
            return [mint_token(f"bench-user-{i}", ttl=86400) for i in range(n)]

    def publish_headers(self) -> list[str]:
        return [f"Authorization: Bearer {self.publish_token}"]

    def command(self) -> tuple[list[str], dict[str, str], str]:
        cmd = [
            str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app",
            "-w", "1", "--worker-connections", "20000", "-b", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        return cmd, self.env, str(ROOT)

    def ready(self) -> bool:
        try:
            status, _ = http("GET", f"{self.base}/readyz", timeout=2)
            return status == 200
        except OSError:
            return False

    def open_streams(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("notifications_open_streams"):
                return int(float(line.split()[-1]))
        return 0

    def settle(self, timeout: float = 300) -> float:
        """Seconds until the worker has dispatched everything published so far: a marker event
        published now reaches a probe stream (after ``publish_many`` the listener is still
        working through a backlog of hundreds of thousands of events)."""
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as probe:
            probe.sendall(f"GET {self.stream_path}?token={self.stream_token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            seen = b""
            while b"\nevent: notification\n" not in seen:  # the connect message: the probe is live
                seen = seen[-64:] + _recv(probe)
            status, body = http("POST", self.publish_url(), {"event": "bench-settled", "data": {}}, self.publish_token)
            assert status == 201, body
            marker = f"id: {body['id']}\nevent: bench-settled".encode()
            while marker not in seen:
                seen = seen[-256:] + _recv(probe)
        self.wait_idle()
        return round(time.monotonic() - t0, 2)


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the probe stream")
    return data


class FlaskReference(Server):
    name = "flask-gevent-ref"
    stream_path = "/stream"
    publish_path = "/publish"

    def body(self) -> str:
        return '{"seq":{{seq}},"t":{{t}}}'

    def command(self) -> tuple[list[str], dict[str, str], str]:
        cmd = [
            str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections", "20000",
            "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "app_flaskgevent:app",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        return cmd, env, str(REFERENCE)


class Nchan(Server):
    name = "nginx-nchan-ref"
    stream_path = "/stream"
    publish_path = "/publish"

    CONF = """load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 30000; use epoll; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    nchan_shared_memory_size 256m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /stream {{ nchan_subscriber eventsource; nchan_channel_id bench;
                             nchan_subscriber_first_message newest; }}
        location = /publish {{ nchan_publisher; nchan_channel_id bench;
                              nchan_message_buffer_length 100; nchan_message_timeout 60s; }}
    }}
}}
"""

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None and Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()

    def body(self) -> str:
        return '{"seq":{{seq}},"t":{{t}}}'

    def command(self) -> tuple[list[str], dict[str, str], str]:
        self.dir = tempfile.mkdtemp(prefix="bench-nchan-")
        os.chmod(self.dir, 0o755)
        conf = Path(self.dir) / "nginx.conf"
        conf.write_text(self.CONF.format(dir=self.dir, port=self.port))
        return [shutil.which("nginx") or "nginx", "-p", self.dir, "-c", str(conf)], dict(os.environ), self.dir

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)


# ------------------------------------------------------------------------------- phases


class RSSSampler(threading.Thread):
    """Samples the worker's RSS every ``every`` seconds while a phase runs."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stopped.is_set():
            self.samples.append((round(time.monotonic() - t0, 1), rss_kb(self.pid)))
            self.stopped.wait(self.every)

    def stop(self) -> list[tuple[float, int]]:
        self.stopped.set()
        self.join()
        return self.samples


def loadgen(server: Server, label: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    cmd = [
        "taskset", "-c", LOADGEN_CPU, str(LOADGEN), "-url", server.stream_url(),
        "-rss-pids", f"{server.proc.pid if server.proc else 0},{server.worker}", "-cpu-pid", str(server.worker),
        *args,
    ]  # fmt: skip
    log(f"{server.name}: {label}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=timeout, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({proc.returncode}) in {label}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["label"] = label
    idle = server.wait_idle()
    if idle is not None:
        result["open_streams_zero_after_s"] = None if idle < 0 else round(idle, 2)
    return result


def fanout(
    server: Server, label: str, streams: int, rate: float, pub_s: float, hold_s: float = 3, **extra: Any
) -> dict[str, Any]:
    args = [
        "-mode", "fanout", "-c", str(streams), "-ramp", str(extra.get("ramp", 2000)),
        "-dial-conc", str(extra.get("dial_conc", 200)),
        "-hold", f"{hold_s}s", "-q",
    ]  # fmt: skip
    if extra.get("steps"):
        args += ["-rss-steps", ",".join(map(str, extra["steps"])), "-settle", "2s"]
    if pub_s > 0:
        args += [
            "-pub", server.publish_url(), "-body", server.body(), "-rate", str(rate),
            "-pub-dur", f"{pub_s}s", "-pub-conc", str(extra.get("pub_conc", 4)),
            "-drain", f"{extra.get('drain', 15)}s",
        ]  # fmt: skip
        for header in server.publish_headers():
            args += ["-pub-H", header]
    return loadgen(server, label, *args)


def churn(server: Server, seconds: float, workers: int = 64, warm_up: float = 2) -> dict[str, Any]:
    """New streams per second; after ``warm_up`` seconds of the same load, not measured, so
    every server is measured warm whichever phase ran before (a fresh worker is slower at first)."""
    args = ["-mode", "churn", "-c", str(workers), "-until", server.churn_until, "-q"]
    if warm_up:
        loadgen(server, f"churn warm-up {warm_up:g}s", *args, "-dur", f"{warm_up}s")
    return loadgen(server, f"churn {workers} workers x {seconds:g}s", *args, "-dur", f"{seconds}s")


def churn_cold(server: Project, seconds: float, workers: int = 64) -> dict[str, Any]:
    """Churn where every connection brings a token the worker has not seen (every browser's
    first reconnect to a fresh worker after a deploy): JWT verification and Flask each time."""
    path = RESULTS / "churn-cold-urls.txt"
    path.write_text("\n".join(server.stream_url(token) for token in server.fresh_tokens(int(seconds * 4000))))
    return loadgen(
        server, f"churn {workers} workers x {seconds:g}s, a new token per connection", "-mode", "churn",
        "-c", str(workers), "-dur", f"{seconds}s", "-until", server.churn_until, "-url-file", str(path), "-q",
    )  # fmt: skip


def storm(server: Project, streams: int, behind: int = 100) -> dict[str, Any]:
    status, first = http("POST", server.publish_url(), {"event": "bench-marker", "data": {}}, server.publish_token)
    assert status == 201, first
    base = int(first["id"])
    now = time.time_ns()
    batch = [{"event": "bench", "data": {"seq": i, "t": now}} for i in range(1, behind + 1)]
    status, body = http("POST", server.publish_url(), batch, server.publish_token)
    assert status == 201, body
    until = int(body["ids"][-1])
    return loadgen(
        server, f"reconnect storm {streams} streams x {behind} behind", "-mode", "storm", "-c", str(streams),
        "-dial-conc", str(streams), "-last-id", str(base), "-until-id", str(until), "-expect", str(behind),
        "-timeout", "60s", "-q",
    )  # fmt: skip


def _publisher_process(url: str, secret: str, seconds: float, batch: int, start: Any, out: Any) -> None:
    os.environ["LOG_LEVEL"] = "warning"
    from app import create_app
    from notifications import publish, publish_many

    app = create_app({"DATABASE_URL": url, "JWT_SECRET_KEY": secret, "NOTIFICATIONS_AUTO_MIGRATE": False})
    with app.app_context():
        publish("bench-warmup", {"seq": 0})
        start.wait()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if batch <= 1:
                publish("bench-throughput", {"seq": n, "t": time.time_ns()})
                n += 1
            else:
                publish_many([{"event": "bench-throughput", "data": {"seq": n + i}} for i in range(batch)])
                n += batch
        out.put((n, time.perf_counter() - t0))


def publish_throughput(server: Project, processes: int, seconds: float, batch: int) -> dict[str, Any]:
    label = f"publish{'_many' if batch > 1 else ''}() x {processes} processes" + (
        f", batches of {batch}" if batch > 1 else ""
    )
    log(f"{server.name}: {label}")
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_publisher_process, args=(server.database_url, server.secret, seconds, batch, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(3 + processes * 0.5)  # each imports the app and opens its pool first
    cpu0 = _cpu_ticks(server.worker)
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    cpu1 = _cpu_ticks(server.worker)
    for p in procs:
        p.join(30)
    total = sum(n for n, _ in results)
    wall = max(w for _, w in results)
    return {
        "label": label, "processes": processes, "batch": batch, "events": total,
        "seconds": round(wall, 2), "rate": round(total / wall, 1),
        "worker_cpu_s": round((cpu1 - cpu0) / 100, 2),
    }  # fmt: skip


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def soak(server: Project, streams: int, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    sampler = RSSSampler(server.worker, every=10)
    sampler.start()
    result = fanout(server, f"soak {streams} x {rate:g}/s for {seconds:g}s", streams, rate, seconds, hold_s=2, drain=30)
    samples = sampler.stop()
    # RSS after warm-up vs the end of the publish phase (both with every stream open)
    connect_s = result["connect"]["seconds"] + 2
    steady = [(t, r) for t, r in samples if t >= connect_s + warmup and t <= connect_s + seconds]
    if len(steady) >= 2:
        first, last = steady[0][1], max(r for _, r in steady[-3:])
        result["rss_after_warmup_kb"], result["rss_end_kb"] = first, last
        result["rss_growth_pct"] = round(100 * (last - first) / first, 2)
    result["rss_samples"] = samples
    return result


# ------------------------------------------------------------------------------- suite


STREAM_PHASES = ("idle_fresh", "idle", "at_once", "series", "1k_10", "1k_50", "100_100", "churn")
PROJECT_PHASES = ("churn_cold", "storm", "publish", "publish_many")
ALL_PHASES = (*STREAM_PHASES, *PROJECT_PHASES, "soak")


def run_streams_suite(server: Server, quick: bool, only: set[str]) -> dict[str, Any]:
    """The stream loads every server gets (project and references alike)."""
    r: dict[str, Any] = {}
    big = 2000 if quick else 10000
    pub = 5 if quick else 30
    if "idle_fresh" in only:  # first: the worker has served nothing but the readiness probe
        fresh = 1000 if quick else 5000
        steps = [s for s in (500, 1000, 2500, 5000) if s <= fresh]
        r["idle_fresh"] = fanout(server, f"idle {fresh} streams, fresh worker", fresh, 0, 0, hold_s=3, steps=steps)
    if "idle" in only:
        steps = [s for s in (500, 1000, 2500, 5000, 10000) if s <= big]
        r["idle"] = fanout(server, f"idle {big} streams", big, 0, 0, hold_s=3 if quick else 10, steps=steps)
    if "at_once" in only:
        n = 1000 if quick else 5000
        r["at_once"] = fanout(server, f"{n} streams connecting at once", n, 0, 0, hold_s=1, ramp=0, dial_conc=n)
    if "series" in only:
        r["series"] = [
            fanout(server, f"{n} streams x 2/s", n, 2, 5 if quick else 20)
            for n in ([200, 1000, 2000] if quick else [1000, 2500, 5000, 10000])
        ]
    if "1k_10" in only:
        r["1k_10"] = fanout(server, "1000 streams x 10/s", 1000, 10, pub)
    if "1k_50" in only:
        r["1k_50"] = fanout(server, "1000 streams x 50/s", 1000, 50, pub, pub_conc=8)
    if "100_100" in only:
        r["100_100"] = fanout(server, "100 streams x 100/s", 100, 100, 5 if quick else 20, pub_conc=8)
    if "churn" in only:
        r["churn"] = churn(server, 3 if quick else 10)
    return r


def series_point(r: dict[str, Any], n: int) -> dict[str, Any] | None:
    for s in r.get("series", []):
        if s["connect"]["requested"] == n:
            return s
    return None


def targets(r: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Each target of the performance issue: name, figure, limit, pass (phases not run are left out)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, figure: Any, unit: str, ok: bool, limit: str, ref: str = "") -> None:
        rows.append(
            {"target": name, "figure": figure, "unit": unit, "limit": limit, "pass": bool(ok), "reference": ref}
        )

    if "idle_fresh" in r:
        fresh = r["idle_fresh"]
        per = fresh["rss"].get("per_stream_kb")
        add(
            f"(1) RSS per idle authenticated stream, fresh worker to {fresh['connect']['requested']:,}",
            per,
            "KiB",
            per is not None and per <= 18,
            "<= 18",
            "Flask 24 (fresh)",
        )
    if "idle" in r:
        idle = r["idle"]
        per = idle["rss"].get("per_stream_kb")
        n_big = idle["connect"]["requested"]
        add(
            f"(1) RSS per idle authenticated stream @ {n_big:,}, warm worker (after the fresh phase)",
            per,
            "KiB",
            per is not None and per <= 18,
            "<= 18",
            "Nchan 14, Flask 24",
        )
        errors = idle["connect"]["failed"] + idle["dropped"] + idle["error_events"]
        add(
            f"(1) {n_big:,} streams held by one worker",
            f"{idle['connect']['established']:,} open, {errors} errors",
            "",
            idle["connect"]["established"] == n_big and errors == 0,
            "0 errors",
        )

    def latency_row(res: dict[str, Any] | None, name: str, limit_ms: float, ref: str) -> None:
        if res is None:
            return
        d = res["delivery"]
        p99 = d["latency"].get("p99_ms")
        add(f"(2) p99 {name}", p99, "ms", p99 is not None and p99 <= limit_ms, f"<= {limit_ms:g}", ref)
        add(
            f"(2) lost / duplicates {name}",
            f"{d['lost']} / {d['duplicates']}",
            "",
            d["lost"] == 0 and d["duplicates"] == 0 and res["dropped"] == 0,
            "0 / 0",
        )

    if "1k_10" in r:
        latency_row(r["1k_10"], "1,000 x 10/s", 40, "Nchan 17, Flask 65")
    five = series_point(r, 5000)
    if five is not None:
        latency_row(five, "5,000 x 2/s", 250, "Nchan 76-89, Flask 472-625")
    elif quick and series_point(r, 2000) is not None:
        latency_row(series_point(r, 2000), "2,000 x 2/s (quick; target at 5,000)", 250, "")
    if "1k_10" in r:
        cpu = r["1k_10"].get("server_cpu", {}).get("per_delivery_us")
        add(
            "(3) server CPU per delivery @ 1,000 x 10/s",
            cpu,
            "us",
            cpu is not None and cpu <= 25,
            "<= 25",
            "Nchan ~15, Flask 49-62",
        )
    if "1k_50" in r:
        f50 = r["1k_50"]
        d = f50["delivery"]
        trend = d.get("per_second", [])
        third = max(1, len(trend) // 3)
        head = max((w["p99_ms"] for w in trend[:third]), default=0)
        tail = max((w["p99_ms"] for w in trend[-third:]), default=0)
        growing = tail > 2 * head + 50 or d["drain_s"] > 2
        achieved = f50["publish"].get("achieved_rate", 0)
        add(
            "(3) 1,000 x 50/s sustained: lost, p99 first->last third, rate",
            f"{d['lost']} lost, {head:g}->{tail:g} ms, {achieved:g}/s",
            "",
            d["lost"] == 0 and not growing and achieved >= 0.95 * 50 and f50["dropped"] == 0,
            "0 lost, flat",
        )
    if "churn" in r:
        ch = r["churn"]
        add(
            "(4) new authenticated streams per second",
            ch["rate"],
            "/s",
            ch["rate"] >= 1500 and ch["error_count"] == 0,
            ">= 1,500",
            "Nchan >= 9,000, Flask 1,300-1,450",
        )
    if "churn_cold" in r:
        ch = r["churn_cold"]
        add(
            "(4) new streams per second, a new token each (cold cache)",
            ch["rate"],
            "/s",
            ch["error_count"] == 0,
            "0 errors",
            "Flask 1,300-1,450 (no auth)",
        )
    if "publish" in r:
        p = r["publish"]
        add("(5) publish() events/s, 8 processes, durable commits", p["rate"], "/s", p["rate"] >= 1000, ">= 1,000")
    if "publish_many" in r:
        p = r["publish_many"]
        add(f"(5) publish_many() events/s (batches of {p['batch']})", p["rate"], "/s", p["rate"] >= 40000, ">= 40,000")
    if "100_100" in r:
        p50 = r["100_100"]["delivery"]["latency"].get("p50_ms")
        add(
            "(5) publish-to-delivery p50 @ 100 events/s (HTTP publish)",
            p50,
            "ms",
            p50 is not None and p50 <= 5 and r["100_100"]["delivery"]["lost"] == 0,
            "<= 5",
        )
    if "at_once" in r:
        c = r["at_once"]["connect"]
        p99 = c["latency"].get("p99_ms")
        add(
            f"(6) {c['requested']:,} streams connecting at once: all open, p99 connect latency",
            p99,
            "ms",
            c["established"] == c["requested"] and p99 is not None and p99 <= 3000,
            "<= 3000, all open",
        )
    if "storm" in r:
        s = r["storm"]
        ok = (s["caught_up"] == s["streams"] and s["all_caught_up_s"] <= 5 and s["error_count"] == 0
              and s["streams_with_wrong_count"] == 0 and s["duplicates"] == 0)  # fmt: skip
        add(
            f"(6) reconnect storm {s['streams']:,} x 100 behind: all caught up",
            s["all_caught_up_s"],
            "s",
            ok,
            "<= 5, 0 errors",
        )
    if "soak" in r:
        s = r["soak"]
        g = s.get("rss_growth_pct")
        ok = g is not None and g <= 5 and s["delivery"]["lost"] == 0 and s["dropped"] == 0
        add(f"(7) {s['label']}: RSS growth after warm-up", g, "%", ok, "<= 5, 0 lost")
    gauge = [v.get("open_streams_zero_after_s", "n/a") for v in _phases(r)]
    if gauge:
        bad = [g for g in gauge if g is None]
        add(
            "(7) open-stream gauge back to 0 after clients leave",
            f"{len(gauge) - len(bad)}/{len(gauge)} phases",
            "",
            not bad,
            "every phase",
        )
    return rows


def _phases(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for value in r.values():
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, dict) and "mode" in v)
        elif isinstance(value, dict) and "mode" in value:
            out.append(value)
    return out


def generator_cpu(r: dict[str, Any]) -> dict[str, Any]:
    phases = _phases(r)
    if not phases:
        return {"max_cpu_pct": None, "phase": "no load-generator phase", "by_phase": {}}
    worst = max(phases, key=lambda p: p["generator"]["cpu_pct"])
    return {"max_cpu_pct": worst["generator"]["cpu_pct"], "phase": worst["label"],
            "by_phase": {p["label"]: p["generator"]["cpu_pct"] for p in phases}}  # fmt: skip


# ------------------------------------------------------------------------------- output


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    systems = [k for k in ("notifications", "flask-gevent-ref", "nginx-nchan-ref") if k in results]
    metrics = [
        ("RSS per idle stream, fresh worker to 5,000 (KiB)", lambda r: r["idle_fresh"]["rss"].get("per_stream_kb")),
        ("RSS per idle stream, warm worker (KiB)", lambda r: r["idle"]["rss"].get("per_stream_kb")),
        ("p99 1,000 x 10/s (ms)", lambda r: r["1k_10"]["delivery"]["latency"].get("p99_ms")),
        (
            "p99 5,000 x 2/s (ms)",
            lambda r: (series_point(r, 5000) or {}).get("delivery", {}).get("latency", {}).get("p99_ms"),
        ),
        (
            "p99 10,000 x 2/s (ms)",
            lambda r: (series_point(r, 10000) or {}).get("delivery", {}).get("latency", {}).get("p99_ms"),
        ),
        (
            "server CPU per delivery 1,000 x 10/s (us)",
            lambda r: r["1k_10"].get("server_cpu", {}).get("per_delivery_us"),
        ),
        ("p99 1,000 x 50/s (ms)", lambda r: r["1k_50"]["delivery"]["latency"].get("p99_ms")),
        ("p50 100 x 100/s (ms)", lambda r: r["100_100"]["delivery"]["latency"].get("p50_ms")),
        ("p99 connect latency, 5,000 at once (ms)", lambda r: r["at_once"]["connect"]["latency"].get("p99_ms")),
        ("new streams per second", lambda r: r["churn"]["rate"]),
        # the references have no tokens: their only churn is the baseline of a new token each
        ("new streams per second, a new token each", lambda r: r.get("churn_cold", r["churn"])["rate"]),
    ]
    rows = []
    for name, get in metrics:
        row: dict[str, Any] = {"metric": name}
        for s in systems:
            try:
                row[s] = get(results[s])
            except (KeyError, TypeError):
                row[s] = None
        mine = row.get("notifications")
        for s in systems[1:]:
            if mine and row.get(s):
                row[f"ratio vs {s}"] = round(mine / row[s], 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'target':<58} {'figure':>34} {'limit':>18}  result", "-" * 120]
    for row in rows:
        fig = row["figure"]
        figure = f"{fig:,}" if isinstance(fig, (int, float)) and not isinstance(fig, bool) else str(fig)
        figure = f"{figure} {row['unit']}".strip()
        verdict = "PASS" if row["pass"] else "FAIL"
        lines.append(f"{row['target']:<58} {figure:>34} {row['limit']:>18}  {verdict}")
    text = "\n".join(lines)
    print(text)
    return text


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        if not isinstance(r, dict) or "series" not in r or "idle" not in r:
            continue
        xs = [s["connect"]["established"] for s in r["series"]]
        ys = [s["delivery"]["latency"].get("p99_ms") for s in r["series"]]
        ax1.plot(xs, ys, marker="o", label=name)
        steps = r["idle"]["rss"].get("steps", [])
        ax2.plot([s["streams"] for s in steps], [s.get("per_stream_kb") for s in steps], marker="o", label=name)
    ax1.axhline(250, color="grey", ls=":", lw=1)
    ax1.set(
        xlabel="open streams",
        ylabel="p99 delivery latency (ms)",
        title="p99 latency at 2 events/s (one worker)",
        yscale="log",
    )
    ax2.axhline(18, color="grey", ls=":", lw=1)
    ax2.set(xlabel="open streams", ylabel="RSS per idle stream (KiB)", title="memory per stream (worker RSS delta)")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(doc: dict[str, Any], table: str, path: Path) -> None:
    env = doc["environment"]
    lines = [
        "# Benchmark results",
        "",
        f"Made by `{doc['command']}` on {doc['finished']} at commit {env.get('commit')} "
        f"(load average at start {env['load_at_start']}).",
        f"Server: `gunicorn -c gunicorn.conf.py wsgi:app`, one gevent worker pinned to CPU {SERVER_CPU}; "
        f"load generator (`bench/loadgen`, Go) pinned to CPU {LOADGEN_CPU}. "
        f"PostgreSQL {env['postgres'].get('server_version')} "
        f"(fsync={env['postgres'].get('fsync')}, synchronous_commit={env['postgres'].get('synchronous_commit')}).",
        f"Connection limits: {env.get('limits', 'off')}; log level: info (the default). "
        f"Disk: {env.get('fdatasync_per_s')} fdatasync/s (pg_test_fsync). "
        f"Generator CPU: at most {doc['generator']['max_cpu_pct']} % of its core ({doc['generator']['phase']}).",
        "",
        "| target | figure | limit | reference (issue) | result |",
        "|---|---|---|---|---|",
        *(
            f"| {t['target']} | {t['figure']} {t['unit']} | {t['limit']} | {t['reference']} | "
            f"{'PASS' if t['pass'] else '**FAIL**'} |"
            for t in doc["targets"]
        ),
        "",
        f"Load average at the end: {env.get('load_at_end')}. Details of every phase: `bench/results/latest.json`.",
        "",
    ]
    if doc.get("comparison"):
        systems = [k for k in ("notifications", "flask-gevent-ref", "nginx-nchan-ref") if k in doc["results"]]
        ratios = [f"ratio vs {s}" for s in systems[1:]]
        header = "| metric | " + " | ".join(systems + ratios) + " |"
        lines += ["## Same loads against the reference servers", "", header,
                  "|---" * (1 + len(systems) + len(ratios)) + "|"]  # fmt: skip
        for row in doc["comparison"]:
            cells = [str(row.get(k, "")) for k in systems + ratios]
            lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![p99 latency and memory per stream](../docs/bench.png)", ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small counts, seconds per phase)")
    parser.add_argument("--soak", action="store_true", help="also the 10-minute soak at 5,000 streams x 10/s")
    parser.add_argument(
        "--compare", action="store_true", help="also run the stream loads against the reference servers"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also record py-spy profiles of the worker (after the measured phases)"
    )
    parser.add_argument("--only", help=f"run only these phases (comma-separated): {', '.join(ALL_PHASES)}")
    parser.add_argument("--only-compare", action="store_true", help="run only the reference servers")
    parser.add_argument(
        "--limits-off", action="store_true", help="switch the three connection limits off (not the shipped defaults)"
    )
    args = parser.parse_args()
    only = set(ALL_PHASES[:-1]) | ({"soak"} if args.soak else set())
    if args.only:
        only = {p.strip() for p in args.only.split(",")}
        unknown = only - set(ALL_PHASES)
        if unknown:
            parser.error(f"unknown phases {sorted(unknown)}: choose from {', '.join(ALL_PHASES)}")

    os.chdir(ROOT)
    build_loadgen()
    raise_nofile()
    RESULTS.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    if load[0] > 0.5:
        log(f"warning: load average {load[0]:.2f}: other work on this machine makes the figures noisy")
    command = "python bench/run.py" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items() if v
    )
    doc: dict[str, Any] = {
        "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": {
            "load_at_start": [round(x, 2) for x in load], "cpus": os.cpu_count(), "commit": _commit(),
            "limits": "off" if args.limits_off else "on (enforced, set high enough never to refuse)",
        },
        "results": {},
    }  # fmt: skip
    db = Database()
    try:
        url = db.start()
        doc["environment"]["postgres"] = db.settings()
        if not args.only_compare:
            doc["environment"]["fdatasync_per_s"] = db.fsync_rate()
        if not args.only_compare:
            project = Project(url, limits=not args.limits_off)
            project.start()
            try:
                r = run_streams_suite(project, args.quick, only)
                if "churn_cold" in only:
                    r["churn_cold"] = churn_cold(project, 3 if args.quick else 10)
                if "storm" in only:
                    r["storm"] = storm(project, 1000 if args.quick else 5000)
                secs = 3 if args.quick else 10
                if "publish" in only:
                    r["publish"] = publish_throughput(project, 8, secs, 1)
                if "publish_many" in only:
                    r["publish_many"] = publish_throughput(project, 1, secs, 1000)
                if "soak" in only:
                    log(f"notifications: settled after {project.settle()} s")
                    r["soak"] = soak(project, 1000 if args.quick else 5000, 10, 60 if args.quick else 600,
                                     20 if args.quick else 120)  # fmt: skip
                if args.profile:
                    r["profile"] = profile(project)
            finally:
                project.stop()
            doc["results"]["notifications"] = r
        if args.compare or args.only_compare:
            refs: list[Server] = [FlaskReference()]
            if Nchan.available():
                refs.append(Nchan())
            else:
                log("nginx + Nchan not installed: comparing with the Flask reference only")
            for ref in refs:
                ref.start()
                try:
                    doc["results"][ref.name] = run_streams_suite(ref, args.quick, only)
                finally:
                    ref.stop()
    finally:
        db.stop()

    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    doc["environment"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    table = ""
    if "notifications" in doc["results"]:
        r = doc["results"]["notifications"]
        doc["targets"] = targets(r, args.quick)
        doc["generator"] = generator_cpu(r)
        print()
        table = print_table(doc["targets"])
        print(
            f"\nload generator: at most {doc['generator']['max_cpu_pct']} % CPU of its core "
            f"({doc['generator']['phase']})"
        )
    if len(doc["results"]) > 1:
        doc["comparison"] = comparison_rows(doc["results"])
        print("\ncomparison (same loads):")
        for row in doc["comparison"]:
            print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()))
    partial = bool(args.only) or args.only_compare
    out = RESULTS / ("quick.json" if args.quick else "partial.json" if partial else "latest.json")
    out.write_text(json.dumps(doc, indent=1))
    log(f"wrote {out}")
    if not args.quick and not partial and "notifications" in doc["results"]:
        plot(doc["results"], ROOT / "docs" / "bench.png")
        write_markdown(doc, table, BENCH / "RESULTS.md")
        log("wrote bench/RESULTS.md and docs/bench.png")
    elif args.quick:
        plot(doc["results"], RESULTS / "quick.png")
    failed = [t for t in doc.get("targets", []) if not t["pass"]]
    return 1 if failed else 0


def _commit() -> str:
    """The commit measured, with ``+dirty`` when the package has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "notifications", "app.py", "wsgi.py", "gunicorn.conf.py"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except OSError:
        return "unknown"
    return head.strip() + ("+dirty" if dirty.strip() else "")


def profile(server: Project) -> dict[str, Any]:
    """py-spy on the worker during a 1,000 x 10/s run, a churn run, a reconnect storm and
    100 x 100/s HTTP publishing: speedscope files
    (bench/results/profile-*.speedscope.json) plus the top functions by own and total samples."""
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    out: dict[str, Any] = {}
    for name, run, secs in (
        ("fanout_1k_10", lambda: fanout(server, "profile: 1000 x 10/s", 1000, 10, 25, hold_s=1), 28),
        ("churn", lambda: churn(server, 15), 14),
        ("storm", lambda: storm(server, 5000), 15),
        ("publish_http_100", lambda: fanout(server, "profile: 100 x 100/s", 100, 100, 20, hold_s=1, pub_conc=8), 20),
    ):
        path = RESULTS / f"profile-{name}.speedscope.json"
        spy_proc = subprocess.Popen(
            [spy, "record", "-p", str(server.worker), "-d", str(secs), "-r", "250", "--nonblocking",
             "-f", "speedscope", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        result = run()
        spy_proc.wait(timeout=120)
        out[name] = {"during": result["label"], "file": str(path.relative_to(ROOT)), **summarize_speedscope(path)}
    return out


def summarize_speedscope(path: Path, top: int = 25) -> dict[str, Any]:
    """Own and inclusive sample shares per function from a py-spy speedscope file."""
    if not path.exists():
        return {"error": "no profile written"}
    doc = json.loads(path.read_text())
    frames = [f"{f['name']} ({Path(f.get('file', '?')).name}:{f.get('line', '?')})" for f in doc["shared"]["frames"]]
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for prof in doc["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=False):
            total += weight
            if stack:
                own[frames[stack[-1]]] += weight
            for f in {frames[i] for i in stack}:
                incl[f] += weight

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / max(total, 1), 1)) for f, n in c.most_common(top)]

    return {"samples": total, "own": share(own), "inclusive": share(incl)}


if __name__ == "__main__":
    sys.exit(main())
