"""Publishing without a global lock, against pgbench on the same PostgreSQL in the same run.

    .venv/bin/python bench/publishing.py [--seconds 10] [--listeners 100]

One embedded PostgreSQL (durable commits) and the service (one gunicorn worker, shipped
defaults: it runs the sequencer and a listener). In order:

1. pgbench, 8 clients: the old design's lock + INSERT + NOTIFY transaction, INSERT + NOTIFY, and
   a plain INSERT (a jsonb row like an event's);
2. ``publish()`` from 8 processes; ``publish_many()`` of 1,000 from one process;
3. publish → delivery latency at 100 publishes/s (HTTP publish, 100 streams, the load generator);
4. again with ``--listeners`` idle LISTEN sessions on the events channel (25 machines x 4 workers
   by default), which PostgreSQL signals at every notifying commit: pgbench's INSERT + NOTIFY and
   INSERT, and ``publish()`` from 8 processes.

The figures go to ``bench/results/publishing.json`` and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the embedded database, the server, the publishers)

SCRIPTS = {
    "lock + INSERT + NOTIFY": (
        "BEGIN;\nSELECT pg_advisory_xact_lock(42);\n"
        "INSERT INTO bench_pgb (data) VALUES ('{\"n\": 1}');\nNOTIFY bench_pgb;\nCOMMIT;\n"
    ),
    "INSERT + NOTIFY": "BEGIN;\nINSERT INTO bench_pgb (data) VALUES ('{\"n\": 1}');\nNOTIFY bench_pgb;\nCOMMIT;\n",
    "INSERT": "INSERT INTO bench_pgb (data) VALUES ('{\"n\": 1}');\n",
}


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def pgbench(url: str, script: str, seconds: float, clients: int = 8) -> float:
    """Transactions per second of ``script`` from ``clients`` pgbench clients."""
    from notifications.embedded import find_binaries

    folders = [find_binaries(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    tool = next(f / "pgbench" for f in folders if (f / "pgbench").exists())
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        out = subprocess.run(
            [str(tool), "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds)), "-f", f.name, libpq(url)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    for line in out.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(f"pgbench said: {out.stdout}\n{out.stderr}")


class IdleListeners:
    """``n`` sessions that LISTEN on a channel and read what arrives (as idle workers do)."""

    def __init__(self, url: str, channel: str, n: int) -> None:
        self.conns = []
        for _ in range(n):
            conn = psycopg2.connect(libpq(url))
            conn.autocommit = True
            conn.cursor().execute(f'LISTEN "{channel}"')
            self.conns.append(conn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select(self.conns, [], [], 0.2)
            for conn in readable:
                conn.poll()
                conn.notifies.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()


def pgbench_all(url: str, seconds: float, which: tuple[str, ...]) -> dict[str, float]:
    figures = {}
    for name in which:
        figures[name] = pgbench(url, SCRIPTS[name], seconds)
        run.log(f"pgbench {name}: {figures[name]:,.0f} tx/s")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each measurement")
    parser.add_argument("--listeners", type=int, default=100, help="idle LISTEN sessions for step 4")
    args = parser.parse_args()
    run.build_loadgen()
    run.raise_nofile()
    db = run.Database()
    out: dict[str, Any] = {"command": " ".join(["python", "bench/publishing.py", *sys.argv[1:]])}
    try:
        url = db.start()
        out["postgres"] = db.settings()
        conn = psycopg2.connect(libpq(url))
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE IF NOT EXISTS bench_pgb (id bigserial PRIMARY KEY, data jsonb NOT NULL)")
        conn.close()
        project = run.Project(url)
        project.start()
        try:
            out["pgbench"] = pgbench_all(url, args.seconds, tuple(SCRIPTS))
            out["publish"] = run.publish_throughput(project, 8, args.seconds, 1)
            out["publish_many"] = run.publish_throughput(project, 1, args.seconds, 1000)
            run.log(f"notifications: the backlog of publish_many dispatched after {project.settle()} s")
            latency = run.fanout(project, "100 streams x 100 publishes/s", 100, 100, 20)
            out["latency_100_per_s"] = latency["delivery"]["latency"] | {"lost": latency["delivery"]["lost"]}
            listeners = IdleListeners(url, "notification_events", args.listeners)
            try:
                out["with_listeners"] = {
                    "listeners": args.listeners,
                    "pgbench": pgbench_all(url, args.seconds, ("INSERT + NOTIFY", "INSERT")),
                    "publish": run.publish_throughput(project, 8, args.seconds, 1),
                }
            finally:
                listeners.close()
        finally:
            project.stop()
    finally:
        db.stop()
    bar = out["pgbench"]["lock + INSERT + NOTIFY"]
    alone, crowded = out["publish"]["rate"], out["with_listeners"]["publish"]["rate"]
    lat = out["latency_100_per_s"]
    rows = [
        ("publish() x 8 processes, events/s", alone, f"{alone / bar:.2f} x pgbench lock+INSERT+NOTIFY (>= 2)"),
        ("publish_many(1,000) x 1 process, events/s", out["publish_many"]["rate"], ">= 65,000"),
        ("publish -> delivery p50 / p99 at 100/s, ms", f"{lat.get('p50_ms')} / {lat.get('p99_ms')}", "<= 5 / <= 20"),
        (
            f"publish() x 8 with {args.listeners} idle listeners, events/s",
            crowded,
            f"{crowded / alone:.2f} x without them (>= 0.8)",
        ),
        *((f"pgbench {k}, tx/s", f"{v:,.0f}", "") for k, v in out["pgbench"].items()),
        *(
            (f"pgbench {k} with {args.listeners} listeners, tx/s", f"{v:,.0f}", "")
            for k, v in out["with_listeners"]["pgbench"].items()
        ),
    ]
    for name, value, note in rows:
        print(f"{name:<58} {value!s:>14}   {note}")
    path = run.RESULTS / "publishing.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    run.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    sys.exit(main())
