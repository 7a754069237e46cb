"""gunicorn config for bench/memprobe.py: the project's gunicorn.conf.py, plus tracemalloc in
the worker and a greenlet that dumps a snapshot (and live object counts by type) whenever
``$BENCH_PROBE.<n>.trigger`` appears. Benchmark tooling only: never used in production."""

import gc
import json
import os
import runpy
from collections import Counter

_base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gunicorn.conf.py"))
globals().update({k: v for k, v in _base.items() if not k.startswith("__")})
_base_post_worker_init = _base["post_worker_init"]


def post_worker_init(worker):  # noqa: F811
    _base_post_worker_init(worker)
    import tracemalloc

    import gevent

    tracemalloc.start(12)
    prefix = os.environ["BENCH_PROBE"]

    def watch():
        n = 0
        while True:
            gevent.sleep(0.3)
            if os.path.exists(f"{prefix}.{n}.trigger"):
                gc.collect()
                tracemalloc.take_snapshot().dump(f"{prefix}.{n}.snap")
                counts = Counter(type(o).__name__ for o in gc.get_objects())
                with open(f"{prefix}.{n}.types.json", "w") as f:
                    json.dump(counts, f)
                with open(f"{prefix}.{n}.done", "w") as f:
                    f.write("ok")
                n += 1

    gevent.spawn(watch)
