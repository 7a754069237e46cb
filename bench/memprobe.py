"""Where the memory of an idle stream goes: ``.venv/bin/python bench/memprobe.py [--streams N]``.

Starts PostgreSQL and the service as bench/run.py does, but with bench/probe/gunicorn_probe.py
(tracemalloc in the worker), takes a snapshot before and after opening N idle streams, and prints
the allocation sites and object types that grew, per stream. tracemalloc costs time and memory
of its own: use it for proportions, and bench/run.py for the figures."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


def snapshot(prefix: str, n: int) -> tuple[tracemalloc.Snapshot, dict[str, int]]:
    Path(f"{prefix}.{n}.trigger").write_text("")
    for _ in range(600):
        if Path(f"{prefix}.{n}.done").exists():
            break
        time.sleep(0.1)
    snap = tracemalloc.Snapshot.load(f"{prefix}.{n}.snap")
    return snap, json.loads(Path(f"{prefix}.{n}.types.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    run.build_loadgen()
    run.raise_nofile()
    folder = tempfile.mkdtemp(prefix="bench-probe-")
    prefix = f"{folder}/probe"
    db = run.Database()
    server = None
    try:
        server = run.Project(db.start())
        server.env["BENCH_PROBE"] = prefix
        cmd, env, cwd = server.command()
        server.command = lambda: (
            [c if c != "gunicorn.conf.py" else "bench/probe/gunicorn_probe.py" for c in cmd],
            env,
            cwd,
        )
        server.start()
        time.sleep(2)
        before, types0 = snapshot(prefix, 0)
        rss0 = run.rss_kb(server.worker)
        gen = subprocess.Popen(
            ["taskset", "-c", run.LOADGEN_CPU, str(run.LOADGEN), "-url", server.stream_url(), "-mode", "fanout",
             "-c", str(args.streams), "-ramp", "1000", "-hold", "600s", "-q"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        while (server.open_streams() or 0) < args.streams:
            time.sleep(0.5)
        time.sleep(3)
        rss1 = run.rss_kb(server.worker)
        after, types1 = snapshot(prefix, 1)
        gen.kill()
        n = args.streams
        print(f"RSS {rss0} -> {rss1} KiB: {(rss1 - rss0) / n:.2f} KiB per stream (with tracemalloc on)")
        stats = after.compare_to(before, "lineno")
        traced = sum(s.size_diff for s in stats)
        print(
            f"traced Python allocations: {traced / n / 1024:.2f} KiB per stream\n\n"
            "top allocation sites (bytes per stream):"
        )
        for s in stats[:25]:
            frame = s.traceback[0]
            print(f"  {s.size_diff / n:8.0f} B  {s.count_diff / n:6.2f} blocks  {frame.filename}:{frame.lineno}")
        print("\nobject types that grew (per stream):")
        grew = sorted(((types1.get(k, 0) - types0.get(k, 0)) / n, k) for k in types1)
        for count, name in reversed(grew[-25:]):
            print(f"  {count:6.2f}  {name}")
        print("\nbiggest sites with their call stacks:")
        for s in after.compare_to(before, "traceback")[:6]:
            print(f"  {s.size_diff / n:8.0f} B per stream")
            for line in s.traceback.format()[-12:]:
                print("     " + line)
    finally:
        if server is not None:
            server.stop()
        db.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
