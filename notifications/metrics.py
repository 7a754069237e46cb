"""Prometheus metrics, correct across gunicorn worker processes.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before
the workers start; every worker writes its samples there and ``/metrics`` adds them up. Without
it (a single process) the default registry is used.
"""

from __future__ import annotations

import os
import resource
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

OPEN_STREAMS = Gauge("notifications_open_streams", "Streams open right now.", multiprocess_mode="livesum")
STREAMS_OPENED = Counter("notifications_streams_opened_total", "Streams opened (after admission).")
STREAMS_CLOSED = Counter("notifications_streams_closed_total", "Streams closed, by reason.", ["reason"])
STREAM_DURATION = Histogram(
    "notifications_stream_duration_seconds",
    "How long streams stayed open.",
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, float("inf")),
)
REFUSALS = Counter("notifications_errors_total", "Error events sent to clients, by code.", ["code"])
EVENTS_PUBLISHED = Counter("notifications_events_published_total", "Events stored by this process.")
EVENTS_DELIVERED = Counter("notifications_events_delivered_total", "Events queued to open streams.")
EVENTS_REPLAYED = Counter("notifications_events_replayed_total", "Events sent as replay after a reconnect.")
SLOW_CONSUMERS = Counter("notifications_slow_consumers_total", "Streams closed because their queue overflowed.")
DISCONNECTED_STREAMS = Counter(
    "notifications_disconnected_streams_total", "Streams ended by a disconnect or a token revocation."
)
REVOCATIONS = Counter("notifications_revocations_total", "Token revocations made by this process.")
EVENTS_SEQUENCED = Counter("notifications_events_sequenced_total", "Events moved from the queue into delivery order.")
EVENTS_RENUMBERED = Counter(
    "notifications_events_renumbered_total", "Events that committed after a higher id was delivered (given a new id)."
)
SEQUENCER_LEADER = Gauge(
    "notifications_sequencer_leader",
    "1 in the worker that is the sequencer of its database.",
    multiprocess_mode="livesum",
)
LISTENER_RECONNECTS = Counter("notifications_listener_reconnects_total", "Times a listener lost its connection.")
DELIVERY_LATENCY = Histogram(
    "notifications_delivery_latency_seconds",
    "From an event's commit (its created_at) to its dispatch by a worker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf")),
)
MEMORY = Gauge(
    "notifications_process_resident_memory_bytes",
    "Resident memory of the live worker processes, added up.",
    multiprocess_mode="livesum",
)


_last_sample = 0.0


def sample_memory(every: float = 0.0) -> None:
    """Record this process's resident memory (one read of /proc), at most once per ``every`` s."""
    global _last_sample
    now = time.monotonic()
    if every and now - _last_sample < every:
        return
    _last_sample = now
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        MEMORY.set(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        MEMORY.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def render() -> tuple[bytes, str]:
    """The text exposition of every metric, summed over worker processes when there are several."""
    sample_memory()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit``: a dead worker's live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
