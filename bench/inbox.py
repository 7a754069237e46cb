"""The inbox benchmark: ``.venv/bin/python bench/inbox.py [--total N] [--requests N]``.

It starts a real PostgreSQL (``DATABASE_URL`` if set, else an embedded throwaway cluster, as
``bench/run.py``), stores ``--total`` (default 1,000,000) inbox notifications through the real
publish path (``publish_many`` with ``"inbox": true``, batches of 5,000), of which 10,000 reach
one reader (9,000 targeted to them, 500 broadcasts, 500 on the channel ``team`` they read with a
grant; spread evenly over the id range), the rest other users (50,000 of them) and 97 other
channels. Then it runs the service as shipped (``gunicorn -c gunicorn.conf.py wsgi:app``, one
gevent worker pinned to CPU 0) and measures, through the HTTP routes with a keep-alive client
pinned to CPU 1, the latency of ``GET /inbox/count`` and of a page of 20 (first page, a page deep
in the middle, the unread filter), and of marking all read: for the reader with 10,000 unread and
for users with about 20, to show it does not grow with the count (it is one statement).

Targets (issue 15): ``count`` p99 <= 5 ms, a page of 20 p99 <= 10 ms. Results go to
``bench/results/inbox.json`` and a table to stdout (pasted into ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import RESULTS, ROOT, Database, Project, log  # noqa: E402 (bench/run.py's helpers)

READER = "bench-reader"
BATCH = 5000


def placement(i: int) -> dict[str, Any]:
    """Where the ``i``-th notification goes: every 100th to the reader (of those, one in 20 a
    broadcast and one in 20 on ``team``), one in ten of the rest on another channel, the others
    to one of 50,000 users."""
    if i % 100 == 0:
        k = (i // 100) % 20
        if k == 0:
            return {}
        if k == 1:
            return {"channel": "team"}
        return {"user_id": READER}
    if i % 10 == 1:
        return {"channel": f"ch-{i % 97}"}
    return {"user_id": f"u-{i % 50000}"}


def load(app: Any, total: int) -> float:
    """Store ``total`` inbox notifications with ``publish_many``; return events per second."""
    from notifications import publish_many

    t0 = time.monotonic()
    with app.app_context():
        for start in range(0, total, BATCH):
            publish_many(
                [
                    {
                        "event": "notification",
                        "data": {
                            "type": "notification",
                            "notificationType": "info",
                            "title": f"Order #{i}",
                            "message": f"Order #{i} was shipped.",
                            "duration": 5000,
                        },
                        "inbox": True,
                        **placement(i),
                    }
                    for i in range(start, min(start + BATCH, total))
                ]
            )
            if start and start % 200_000 == 0:
                log(f"stored {start:,} inbox notifications")
    return total / (time.monotonic() - t0)


def vacuum(url: str) -> None:
    """VACUUM ANALYZE the inbox tables (what autovacuum does after a bulk load)."""
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    conn.autocommit = True
    with conn.cursor() as cur:
        for suffix in ("", "_inbox", "_inbox_marks", "_inbox_cursors"):
            cur.execute(f'VACUUM ANALYZE "notification_events{suffix}"')
    conn.close()


class Client:
    """A keep-alive HTTP client with a Bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: Any = None) -> tuple[float, int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return elapsed * 1000, resp.status, json.loads(payload)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "n": len(ordered),
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "max_ms": round(ordered[-1], 3),
    }


def measure(client: Client, paths: dict[str, str], n: int, warmup: int = 200) -> dict[str, dict[str, Any]]:
    """``n`` requests to each of ``paths``, interleaved (one of each in turn, so a burst of other
    work on the machine falls on every route alike), after ``warmup`` rounds."""
    samples: dict[str, list[float]] = {label: [] for label in paths}
    answers: dict[str, Any] = {}
    for i in range(warmup + n):
        for label, path in paths.items():
            ms, status, answers[label] = client.request("GET", path)
            assert status == 200, answers[label]
            if i >= warmup:
                samples[label].append(ms)
    return {
        label: {"path": path, **percentiles(samples[label]), "answer": _summary(answers[label])}
        for label, path in paths.items()
    }


def _summary(answer: Any) -> Any:
    if isinstance(answer, dict) and "items" in answer:
        return {"items": len(answer["items"]), "unread": answer["unread"], "next": answer["next"]}
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=1_000_000, help="inbox notifications to store")
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per route")
    args = parser.parse_args()

    os.sched_setaffinity(0, {1})  # this process (loader, client) on CPU 1; the worker on CPU 0
    db = Database()
    url = db.start()
    server: Project | None = None
    results: dict[str, Any] = {"total": args.total, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        from app import create_app
        from notifications.cli import mint_token

        server = Project(url)
        app = create_app({"DATABASE_URL": url, "JWT_SECRET_KEY": server.secret})
        log(f"storing {args.total:,} inbox notifications with publish_many (batches of {BATCH:,})")
        results["load_events_per_s"] = round(load(app, args.total))
        vacuum(url)
        with app.app_context():
            reader = mint_token(READER, subscribe=("team",), ttl=86400)
            others = [mint_token(f"u-{k}", ttl=86400) for k in range(1, 21)]
        server.start()
        client = Client(server.port, reader)
        base = "/api/notifications/inbox"
        _, _, first = client.request("GET", f"{base}?channels=team&limit=100")
        middle = int(first["items"][0]["id"]) // 2
        results["reader_unread"] = client.request("GET", f"{base}/count?channels=team")[2]["unread"]
        log(f"the reader has {results['reader_unread']:,} unread; measuring {args.requests:,} requests a route")
        n = args.requests
        results["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
        results |= measure(
            client,
            {
                "healthz": "/healthz",  # the same server, no database: the floor
                "count": f"{base}/count?channels=team",
                "page": f"{base}?channels=team&limit=20",
                "page_deep": f"{base}?channels=team&limit=20&before={middle}",
                "page_unread": f"{base}?channels=team&limit=20&unread=1",
            },
            n,
        )

        # mark all read: the reader's 10,000 at once, then 20 users with about 20 each
        ms, status, answer = client.request("POST", f"{base}/read?channels=team", {"all": True})
        assert status == 200 and answer == {"unread": 0}, answer
        results["read_all_10000_ms"] = round(ms, 3)
        small = []
        for token in others:
            c = Client(server.port, token)
            c.request("GET", f"{base}/count")  # warm this token into the worker's cache
            ms, status, answer = c.request("POST", f"{base}/read", {"all": True})
            assert status == 200 and answer == {"unread": 0}, answer
            small.append(ms)
        results["read_all_20_ms_median"] = round(statistics.median(small), 3)
        results |= measure(
            client,
            {
                "count_after_read_all": f"{base}/count?channels=team",
                "page_after_read_all": f"{base}?channels=team&limit=20",
            },
            n,
        )
        results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if server is not None:
            server.stop()
        db.stop()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inbox.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        (f"`GET /inbox/count` ({results['reader_unread']:,} unread)", results["count"], 5),
        ("`GET /inbox?limit=20` (first page)", results["page"], 10),
        ("`GET /inbox?limit=20&before=<middle>`", results["page_deep"], 10),
        ("`GET /inbox?limit=20&unread=1`", results["page_unread"], 10),
        ("`GET /inbox/count` after mark all read", results["count_after_read_all"], 5),
        ("`GET /inbox?limit=20` after mark all read", results["page_after_read_all"], 10),
    ]
    print(f"Inbox: {args.total:,} stored notifications, the reader sees {results['reader_unread']:,}.")
    print(f"Loaded with publish_many at {results['load_events_per_s']:,} inbox notifications/s.\n")
    print("| request (through gunicorn, one gevent worker) | p50 | p99 | limit | result |")
    print("|---|---|---|---|---|")
    for label, r, limit in rows:
        verdict = "PASS" if r["p99_ms"] <= limit else "**FAIL**"
        print(f"| {label} | {r['p50_ms']} ms | {r['p99_ms']} ms | p99 <= {limit} ms | {verdict} |")
    print(
        f'| `POST /inbox/read {{"all": true}}`: {results["reader_unread"]:,} unread / ~20 unread (median of 20 users) '
        f"| {results['read_all_10000_ms']} ms / {results['read_all_20_ms_median']} ms | | one statement | |"
    )
    h = results["healthz"]
    floor = "`GET /healthz` (no database: the floor of this server and client)"
    print(f"| {floor} | {h['p50_ms']} ms | {h['p99_ms']} ms | | |")
    print(f"\nLoad average {results['load_average_start']} at the start, {results['load_average_end']} at the end.")
    print(f"Details: {RESULTS / 'inbox.json'} (root {ROOT})")
    return 0 if all(r["p99_ms"] <= limit for _, r, limit in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
